"""What the SDK tests share: a server, a bucket with the quick-start's data, and one guarded SDK run."""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from tests.support.jobs import COMPLETED_PATH
from tests.support.readme import DOCS, README, code_blocks, localize, section
from tests.support.sdk import Guard, clean_environment, ensure_sdk, make_guard
from tests.support.smlocal import SmlocalServer

REPO_ROOT = Path(__file__).resolve().parents[2]
# Where the snippets the SDK tests run live: (document, heading).
SDK_SECTION = (README, "The SageMaker Python SDK")
SCRIPT_MODE_SECTION = (DOCS / "sdk-and-script-mode.md", "Script mode (workshop, part 2)")
# The SDK defaults file the README's exports name (telemetry off; it names no bucket).
SDK_CONFIG_IN_README = "$PWD/examples/sdk/sagemaker-config.yaml"
# The botocore data folder the README's AWS_DATA_PATH names: an STS endpoint rule set sending STS to smlocal.
AWS_DATA = REPO_ROOT / "examples" / "sdk" / "aws-data"
AWS_DATA_IN_README = "$PWD/examples/sdk/aws-data"
AWS_DATA_ENDPOINT = "http://localhost:8080"
# The SDKs' own default bucket, `sagemaker-<region>-<account>`, for the README's region and smlocal's account.
DEFAULT_BUCKET = "sagemaker-us-east-1-123456789012"
# Where the tuning snippets live: the README's SDK v2 tuner, docs/tuning.md's SDK v3 tuner and aws CLI steps.
TUNING_SECTION = (README, "Hyperparameter tuning")
TUNING_DOC = DOCS / "tuning.md"
NOTEBOOKS = {2: REPO_ROOT / "examples" / "sdk" / "notebook_v2.py", 3: REPO_ROOT / "examples" / "sdk" / "notebook_v3.py"}


def readme_environment() -> str:
    """The README's block of `export`s that make unmodified SDK code work."""
    doc, title = SDK_SECTION
    [exports] = code_blocks(section(title, doc=doc), "sh")
    return exports


def readme_snippet(version: int) -> str:
    doc, title = SDK_SECTION
    v2, v3 = code_blocks(section(title, doc=doc), "python")
    return {2: v2, 3: v3}[version]


def script_mode_snippet(version: int) -> str:
    """docs/sdk-and-script-mode.md's script-mode snippets, next to the aws CLI's script-mode steps."""
    doc, title = SCRIPT_MODE_SECTION
    v2, v3 = code_blocks(section(title, doc=doc), "python")
    return {2: v2, 3: v3}[version]


def localized_aws_data(api: str, tmp: Path) -> Path:
    """examples/sdk/aws-data with the test server's address where the rule set names localhost:8080."""
    folder = tmp / "aws-data"
    shutil.copytree(AWS_DATA, folder)
    rules = list(folder.rglob("*.json"))
    assert rules and all(AWS_DATA_ENDPOINT in path.read_text() for path in rules), \
        "the STS rule set no longer names localhost:8080"
    for path in rules:
        path.write_text(path.read_text().replace(AWS_DATA_ENDPOINT, api))
    return folder


def store_only_server(folder: Path, store: str) -> Iterator[SmlocalServer]:
    """smlocal with its embedded store (`files`, what `make run` starts, or `memory`) and no jobs run: the SDK
    calls that need no container, on a machine without an engine too."""
    server = SmlocalServer(folder, None, ["--no-run-jobs", "--s3-store", store]).start()
    try:
        yield server
    finally:
        server.stop()


DEFAULT_BUCKET_CHECK = """
print("DEFAULT BUCKET " + session.default_bucket())
# Asked again by a new session, the bucket exists: HeadBucket, with the account as ExpectedBucketOwner.
print("AGAIN " + Session().default_bucket())
print("ACCOUNT " + session.account_id())
uri = S3Uploader.upload_string_as_file_body("hello", f"s3://{session.default_bucket()}/probe/hello.txt",
                                            sagemaker_session=session)
print("READ " + S3Downloader.read_file(uri, sagemaker_session=session))
"""


def check_default_bucket(version: int, imports: str, server: SmlocalServer, tmp: Path) -> None:
    """`Session().default_bucket()` under the README's exports, no bucket named anywhere: the SDK's
    `sagemaker-<region>-<account>`, with the account from smlocal's STS, made in smlocal's store (a server
    of store_only_server's). `imports` brings the SDK's Session, S3Uploader and S3Downloader."""
    s3 = server.client("s3")
    assert DEFAULT_BUCKET not in {b["Name"] for b in s3.list_buckets()["Buckets"]}
    run = run_guarded(version, imports + "session = Session()\n" + DEFAULT_BUCKET_CHECK, server, "unused", tmp,
                      timeout=300)
    assert run.result.returncode == 0, run.output[-6000:] + server.log()
    # Nothing asked AWS: the STS lookup at https://sts.us-east-1.amazonaws.com went to smlocal.
    assert run.guard.report() == []
    lines = run.result.stdout.splitlines()
    for line in (f"DEFAULT BUCKET {DEFAULT_BUCKET}", f"AGAIN {DEFAULT_BUCKET}", "ACCOUNT 123456789012", "READ hello"):
        assert line in lines, run.output[-4000:]
    s3.head_bucket(Bucket=DEFAULT_BUCKET)
    assert s3.get_object(Bucket=DEFAULT_BUCKET, Key="probe/hello.txt")["Body"].read() == b"hello"
    if server.args[server.args.index("--s3-store") + 1] == "files":  # a folder of the store's, as every bucket
        assert (server.data_dir / "s3" / DEFAULT_BUCKET / "probe" / "hello.txt").read_text() == "hello"


# What a user might try instead of AWS_DATA_PATH: STS's endpoint variable, and the one for every service.
WITHOUT_AWS_DATA = """
import os
os.environ.pop("AWS_DATA_PATH")
os.environ["AWS_ENDPOINT_URL_STS"] = os.environ["AWS_ENDPOINT_URL"] = os.environ["AWS_ENDPOINT_URL_SAGEMAKER"]
"""


def check_default_bucket_asks_aws_without_aws_data(version: int, imports: str, server: SmlocalServer,
                                                   tmp: Path) -> None:
    """Why the README sets AWS_DATA_PATH: the SDK's STS client names https://sts.<region>.amazonaws.com
    itself, and an explicit endpoint beats AWS_ENDPOINT_URL_STS and AWS_ENDPOINT_URL (the guard refuses it)."""
    run = run_guarded(version, WITHOUT_AWS_DATA + imports + "print(Session().default_bucket())\n", server,
                      "unused", tmp, timeout=300)
    refused = {entry["host"] for entry in run.guard.report()}
    assert "sts.us-east-1.amazonaws.com" in refused, (refused, run.output[-3000:])
    assert run.result.returncode != 0


def tuning_snippet(version: int) -> str:
    """The README's SDK v2 HyperparameterTuner block, or docs/tuning.md's SDK v3 one."""
    doc, title = TUNING_SECTION if version == 2 else (TUNING_DOC, "From SDK v3")
    [snippet] = code_blocks(section(title, doc=doc), "python")
    return snippet


def upload_quickstart_data(server: SmlocalServer, bucket: str, tmp: Path) -> None:
    """What the quick-start does before the SDK snippets: a bucket and the example's training data."""
    data = tmp / "train.csv"
    subprocess.run([sys.executable, str(REPO_ROOT / "examples" / "sklearn" / "make_data.py"), str(data)],
                   check=True, capture_output=True)
    s3 = server.client("s3")
    s3.create_bucket(Bucket=bucket)
    s3.upload_file(str(data), bucket, "data/train/train.csv")


@dataclass
class SdkRun:
    result: subprocess.CompletedProcess[str]
    guard: Guard
    # Every (job, TrainingJobStatus/SecondaryStatus) the test saw while the SDK ran, in order.
    statuses: list[tuple[str, str]] = field(default_factory=list)

    @property
    def output(self) -> str:
        return self.result.stdout + self.result.stderr

    def statuses_of(self, job: str) -> list[str]:
        return [status for name, status in self.statuses if name == job]

    def only_job(self) -> tuple[str, list[str]]:
        """The one job the SDK created, and every status the test saw it in (in order)."""
        jobs = sorted({name for name, _ in self.statuses})
        assert len(jobs) == 1, self.statuses
        return jobs[0], self.statuses_of(jobs[0])


def assert_walked_to(seen: list[str], final: str) -> None:
    """The statuses seen are a forward walk along the completed path (or up to Training), ending `final`."""
    assert seen[-1] == final and "InProgress/Training" in seen, seen
    path = [*COMPLETED_PATH[:-1], final]
    positions = [path.index(status) for status in seen]
    assert positions == sorted(positions), seen


def run_guarded(version: int, script: str, server: SmlocalServer, bucket: str, tmp: Path,
                timeout: float = 600) -> SdkRun:
    """Run `script` with SDK v<version>, the README's exports in front, and record job statuses meanwhile."""
    python = ensure_sdk(version)
    allowed = sorted({urlparse(server.endpoint).hostname or "", urlparse(server.s3_endpoint).hostname or ""})
    guard, guard_env = make_guard(tmp / "guard", allowed)
    env = {**clean_environment(tmp / "home"), **guard_env}
    exports = localize(readme_environment(), api=server.endpoint, s3=server.s3_endpoint, bucket=bucket, tmp=tmp)
    # The SDK config is used as it is ($PWD is the repository: the command runs there); the STS rule is
    # pointed at this test's server.
    assert SDK_CONFIG_IN_README in exports and AWS_DATA_IN_README in exports
    exports = exports.replace(AWS_DATA_IN_README, str(localized_aws_data(server.endpoint, tmp)))
    script_path = tmp / f"sdk{version}_script.py"
    script_path.write_text(localize(script, api=server.endpoint, s3=server.s3_endpoint, bucket=bucket, tmp=tmp))
    command = f'{exports}\nexec "{python}" -u "{script_path}"'
    started = time.time()
    process = subprocess.Popen(["bash", "-euo", "pipefail", "-c", command], cwd=REPO_ROOT, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    outputs: dict[str, str] = {}

    def drain(name: str, stream: Any) -> None:
        outputs[name] = stream.read()

    readers = [threading.Thread(target=drain, args=(n, s), daemon=True)
               for n, s in (("stdout", process.stdout), ("stderr", process.stderr))]
    for reader in readers:
        reader.start()
    run = SdkRun(subprocess.CompletedProcess(process.args, 0), guard)
    sm = server.client()
    deadline = time.monotonic() + timeout
    while process.poll() is None and time.monotonic() < deadline:
        for summary in sm.list_training_jobs(CreationTimeAfter=started - 1, MaxResults=100)["TrainingJobSummaries"]:
            status = f"{summary['TrainingJobStatus']}/{summary['SecondaryStatus']}"
            mine = run.statuses_of(summary["TrainingJobName"])
            if not mine or mine[-1] != status:
                run.statuses.append((summary["TrainingJobName"], status))
        time.sleep(0.2)
    if process.poll() is None:
        process.kill()
    process.wait()
    for reader in readers:
        reader.join(10)
    run.result = subprocess.CompletedProcess(process.args, process.returncode, outputs.get("stdout", ""),
                                             outputs.get("stderr", ""))
    return run
