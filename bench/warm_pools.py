"""Row 6 of `make bench`: a job on a warm pool against the same job started cold, in the same run.

Two measurements, each cold and warm interleaved (a shared machine's load slows both alike):
- the start: CreateTrainingJob to Completed for a no-op container. Locally a cold start already finds
  its image and a network made in advance, so a warm pool saves little here (on SageMaker it saves the
  instances' provisioning);
- a job whose first step fills its persistent cache (/opt/ml/sagemaker/warmpoolcache) with 64 MiB, as a
  `pip install` into a cache would, and skips it when the cache has it: what a warm pool's cache saves.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

from tests.support.docker_env import BUSYBOX_IMAGE
from tests.support.jobs import job_request

RUNS = 3
ROLE = "arn:aws:iam::123456789012:role/bench-warm-pool"
CACHE = "/opt/ml/sagemaker/warmpoolcache"
FILL = (f"[ -f {CACHE}/deps ] || dd if=/dev/urandom of={CACHE}/deps bs=1048576 count=64 2>/dev/null; "
        f"cat {CACHE}/deps > /dev/null")


def _job(sm: Any, name: str, script: str, bucket: str, keep_alive: int, wait_done: Callable[..., Any],
         role: str) -> float:
    request = job_request(name, BUSYBOX_IMAGE, RoleArn=role, OutputDataConfig={"S3OutputPath": f"s3://{bucket}/out"})
    request["AlgorithmSpecification"]["ContainerEntrypoint"] = ["sh", "-c", script]
    request["ResourceConfig"]["KeepAlivePeriodInSeconds"] = keep_alive
    start = time.perf_counter()
    sm.create_training_job(**request)
    wait_done(sm, name)
    return time.perf_counter() - start


def rows(sm: Any, bucket: str, wait_done: Callable[..., Any]) -> list[tuple[str, str, str, str]]:
    found = []
    for label, script in (("Warm pool: job start (no-op container)", "true"),
                          ("Warm pool: a job filling its cache (64 MiB) or finding it", FILL)):
        tag = "noop" if script == "true" else "fill"
        # The warm side runs on one pool from job to job; the first job made it (cold, not counted).
        _job(sm, f"wp-{tag}-prime", script, bucket, 600, wait_done, f"{ROLE}-{tag}")
        cold, warm = [], []
        for i in range(RUNS):
            # Cold: a pool asked for and none to match (a role of its own), so a new pool and an empty cache.
            cold.append(_job(sm, f"wp-{tag}-cold-{i}", script, bucket, 600, wait_done, f"{ROLE}-{tag}-cold-{i}"))
            sm.update_training_job(TrainingJobName=f"wp-{tag}-cold-{i}", ResourceConfig={"KeepAlivePeriodInSeconds": 0})
            warm.append(_job(sm, f"wp-{tag}-warm-{i}", script, bucket, 600, wait_done, f"{ROLE}-{tag}"))
        c, w = statistics.median(cold), statistics.median(warm)
        found.append((label, f"{w:.2f} s create->Completed on a warm pool", f"{c:.2f} s the same job cold",
                      f"{c / w:.2f}x ({c - w:+.2f} s saved)"))
        # Done: the pools are let go, as a user would with KeepAlivePeriodInSeconds 0.
        sm.update_training_job(TrainingJobName=f"wp-{tag}-warm-{RUNS - 1}",
                               ResourceConfig={"KeepAlivePeriodInSeconds": 0})
    return found
