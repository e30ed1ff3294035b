# %% [markdown]
# # Script mode on smlocal, the way a SageMaker notebook does it (SDK v3, ModelTrainer)
#
# The workshop's part 2 from a notebook: make a data set, put it in the store, train `train.py` from
# `examples/script-mode`, watch its log, then fetch the model and look at what it learned. Nothing here
# mentions smlocal: the environment does (the README's *The SageMaker Python SDK* exports:
# `AWS_ENDPOINT_URL_*`, `AWS_DATA_PATH` for STS, keys, region, and `SAGEMAKER_USER_CONFIG_OVERRIDE` for
# telemetry). The same cells run on SageMaker.
#
# Run it from the repository's top folder, with `make run` in another terminal:
# `.venv-sdk3/bin/python examples/sdk/notebook_v3.py`, or open it as a notebook (`# %%` cells:
# VS Code, or Jupyter with jupytext).

# %%
import json
import logging
import tarfile
import tempfile
from pathlib import Path

import numpy as np
from sagemaker.core.helper.session_helper import Session
from sagemaker.core.s3 import S3Downloader, S3Uploader
from sagemaker.core.training.configs import Compute, InputData, MetricDefinition, SourceCode
from sagemaker.train import ModelTrainer

logging.basicConfig(level=logging.INFO, format="%(message)s")  # train(logs=True) prints through logging
session = Session()
bucket = session.default_bucket()  # `sagemaker-<region>-<account>`, created when missing
role = "arn:aws:iam::123456789012:role/SageMakerRole"
work = Path(tempfile.mkdtemp(prefix="notebook-v3-"))
print(f"default bucket: {bucket}; working folder: {work}")

# %% [markdown]
# ## 1. A data set
# 600 rows of 4 features; the label says on which side of a random hyperplane a row lies, with some
# noise, so a logistic regression learns it well but not perfectly. Headerless CSV, label last: what
# `train.py` reads.

# %%
rng = np.random.default_rng(seed=11)
features = rng.normal(size=(600, 4))
weights = rng.normal(size=4)
labels = (features @ weights + rng.normal(scale=0.5, size=600) > 0).astype(int)
np.savetxt(work / "train.csv", np.column_stack([features, labels]), delimiter=",", fmt="%.6f")
train_uri = S3Uploader.upload(str(work / "train.csv"), f"s3://{bucket}/notebook-v3/data/train",
                              sagemaker_session=session)
print(f"{len(labels)} rows ({labels.mean():.0%} positive) uploaded to {train_uri}")

# %% [markdown]
# ## 2. Train in script mode
# `SourceCode`: v3 uploads the folder to the default bucket as an input channel `code`, its own driver
# scripts as a channel `sm_drivers`, and makes `sm_drivers/sm_train.sh` the container's entrypoint; the
# driver runs `python3 train.py --alpha 0.5 --max_iter 200` in `/opt/ml/input/data/code`.
# `logs=True` prints the job's log as it runs.

# %%
trainer = ModelTrainer(
    training_image="smlocal/training-toolkit:1",
    source_code=SourceCode(source_dir="examples/script-mode", entry_script="train.py"),
    role=role,
    compute=Compute(instance_type="ml.m5.large", instance_count=1),
    hyperparameters={"alpha": 0.5, "max_iter": 200},
    base_job_name="notebook-v3",
    sagemaker_session=session,
).with_metric_definitions([MetricDefinition(name="train:accuracy", regex="train_accuracy=([0-9.]+)")])
trainer.train(input_data_config=[InputData(channel_name="train", data_source=train_uri)], wait=True, logs=True)

# %% [markdown]
# ## 3. The model
# Where SageMaker puts it: `s3://<bucket>/<base job name>/<job>/output/model.tar.gz`.

# %%
job = trainer._latest_training_job
job.refresh()
model_uri = job.model_artifacts.s3_model_artifacts
print(f"model: {model_uri}")
S3Downloader.download(model_uri, str(work / "model"), sagemaker_session=session)
with tarfile.open(work / "model" / "model.tar.gz") as tar:
    print(f"model.tar.gz holds: {sorted(name.removeprefix('./') for name in tar.getnames())}")
    tar.extractall(work / "model", filter="data")
metadata = json.loads((work / "model" / "metadata.json").read_text())
print(f"trained {metadata['model']} on {metadata['n_samples']} rows x {metadata['n_features']} features "
      f"(alpha={metadata['alpha']}, max_iter={metadata['max_iter']}) in job {metadata['training_job_name']}")

# %% [markdown]
# ## 4. Metrics
# The value the metric definition found in the log, as DescribeTrainingJob reports it.

# %%
for metric in job.final_metric_data_list:
    print(f"final metric {metric.metric_name} = {metric.value:.4f}")
print(f"trained for {job.training_time_in_seconds} s, billed {job.billable_time_in_seconds} s")
