# %% [markdown]
# # Script mode on smlocal, the way a SageMaker notebook does it (SDK v2)
#
# The workshop's part 2 from a notebook: make a data set, put it in the store, train `train.py` from
# `examples/script-mode` with the SageMaker training toolkit, watch its log, then fetch the model and
# look at what it learned. Nothing here mentions smlocal: the environment does (the README's
# *The SageMaker Python SDK* exports: `AWS_ENDPOINT_URL_*`, `AWS_DATA_PATH` for STS, keys, region, and
# `SAGEMAKER_USER_CONFIG_OVERRIDE` for telemetry). The same cells run on SageMaker.
#
# Run it from the repository's top folder, with `make run` in another terminal:
# `.venv-sdk2/bin/python examples/sdk/notebook_v2.py`, or open it as a notebook (`# %%` cells:
# VS Code, or Jupyter with jupytext).

# %%
import json
import tarfile
import tempfile
from pathlib import Path

import numpy as np
import sagemaker
from sagemaker.estimator import Estimator
from sagemaker.s3 import S3Downloader, S3Uploader

session = sagemaker.Session()
bucket = session.default_bucket()  # `sagemaker-<region>-<account>`, created when missing
role = "arn:aws:iam::123456789012:role/SageMakerRole"
work = Path(tempfile.mkdtemp(prefix="notebook-v2-"))
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
train_uri = S3Uploader.upload(str(work / "train.csv"), f"s3://{bucket}/notebook-v2/data/train")
print(f"{len(labels)} rows ({labels.mean():.0%} positive) uploaded to {train_uri}")

# %% [markdown]
# ## 2. Train in script mode
# `entry_point` + `source_dir`: the SDK packs the folder into `sourcedir.tar.gz`, puts it in the default
# bucket and names it in the job's hyperparameters; the toolkit in the image downloads it and runs
# `python3 train.py --alpha 0.5 --max_iter 200`. `logs="All"` prints the job's log as it runs.

# %%
estimator = Estimator(
    image_uri="smlocal/training-toolkit:1",
    entry_point="train.py",
    source_dir="examples/script-mode",
    role=role,
    instance_count=1,
    instance_type="ml.m5.large",
    hyperparameters={"alpha": 0.5, "max_iter": 200},
    metric_definitions=[{"Name": "train:accuracy", "Regex": "train_accuracy=([0-9.]+)"}],
    base_job_name="notebook-v2",
    sagemaker_session=session,
)
estimator.fit({"train": train_uri}, logs="All")

# %% [markdown]
# ## 3. The model
# Where SageMaker puts it: `s3://<bucket>/<job>/output/model.tar.gz`.

# %%
print(f"model: {estimator.model_data}")
S3Downloader.download(estimator.model_data, str(work / "model"), sagemaker_session=session)
with tarfile.open(work / "model" / "model.tar.gz") as tar:
    print(f"model.tar.gz holds: {sorted(name.removeprefix('./') for name in tar.getnames())}")
    tar.extractall(work / "model", filter="data")
metadata = json.loads((work / "model" / "metadata.json").read_text())
print(f"trained {metadata['model']} on {metadata['n_samples']} rows x {metadata['n_features']} features "
      f"(alpha={metadata['alpha']}, max_iter={metadata['max_iter']}) in job {metadata['training_job_name']}")

# %% [markdown]
# ## 4. Metrics
# The value `MetricDefinitions` found in the log, as DescribeTrainingJob reports it, and the series
# behind it (CloudWatch) as a pandas DataFrame.

# %%
job = estimator.latest_training_job.describe()
for metric in job["FinalMetricDataList"]:
    print(f"final metric {metric['MetricName']} = {metric['Value']:.4f}")
print(f"trained for {job['TrainingTimeInSeconds']} s, billed {job['BillableTimeInSeconds']} s")
print(estimator.training_job_analytics.dataframe())
