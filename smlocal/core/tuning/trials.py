"""A trial's training job: its name and its CreateTrainingJob request, made from a training job definition.

The provider builds one at CreateHyperParameterTuningJob to check a definition by the very rules a training job
meets; the driver builds each trial's with its tuned values.
"""

from __future__ import annotations

import uuid
from typing import Any

# HyperParameterTrainingJobDefinition members a training job takes as they are.
_COPIED = ("RoleArn", "InputDataConfig", "VpcConfig", "OutputDataConfig", "ResourceConfig", "StoppingCondition",
           "EnableNetworkIsolation", "EnableInterContainerTrafficEncryption", "EnableManagedSpotTraining",
           "CheckpointConfig", "RetryStrategy", "Environment")


def trial_name(tuning_job_name: str, number: int) -> str:
    """SageMaker's name for a tuning job's trial: `<tuning job>-<NNN>-<8 hex>` (at most 32 + 13 characters)."""
    return f"{tuning_job_name}-{number:03d}-{uuid.uuid4().hex[:8]}"


def resource_config(definition: dict[str, Any]) -> dict[str, Any] | None:
    """ResourceConfig, or the first instance of HyperParameterTuningResourceConfig (its InstanceConfigs are
    SageMaker's fallbacks when an instance type has no capacity; here the first always has)."""
    if definition.get("ResourceConfig"):
        return definition["ResourceConfig"]
    tuning = definition.get("HyperParameterTuningResourceConfig")
    if not tuning:
        return None
    config = {k: tuning[k] for k in ("InstanceType", "InstanceCount", "VolumeSizeInGB", "VolumeKmsKeyId")
              if k in tuning}
    if "InstanceType" not in config and tuning.get("InstanceConfigs"):
        first = tuning["InstanceConfigs"][0]
        config.update({"InstanceType": first["InstanceType"], "InstanceCount": first["InstanceCount"],
                       "VolumeSizeInGB": first["VolumeSizeInGB"]})
    return config


def trial_request(definition: dict[str, Any], tuned: dict[str, str], name: str) -> dict[str, Any]:
    """The CreateTrainingJob request of one trial: the definition's static hyperparameters and the tuned ones."""
    algorithm = definition["AlgorithmSpecification"]
    request: dict[str, Any] = {
        "TrainingJobName": name,
        "AlgorithmSpecification": {k: algorithm[k] for k in ("TrainingImage", "AlgorithmName", "TrainingInputMode",
                                                              "MetricDefinitions") if k in algorithm},
        "HyperParameters": {**(definition.get("StaticHyperParameters") or {}), **tuned},
    }
    request.update({k: definition[k] for k in _COPIED if k in definition})
    resources = resource_config(definition)
    if resources is not None:
        request["ResourceConfig"] = resources
    return request
