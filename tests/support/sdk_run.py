"""What the SDK tests share: a server, a bucket with the quick-start's data, and one guarded SDK run."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
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
# The SDK defaults file the README's exports name, and the bucket it makes the SDK's default.
SDK_CONFIG = REPO_ROOT / "examples" / "sdk" / "sagemaker-config.yaml"
SDK_CONFIG_IN_README = "$PWD/examples/sdk/sagemaker-config.yaml"
DEFAULT_BUCKET_LINE = "DefaultS3Bucket: workshop"
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


def tuning_snippet(version: int) -> str:
    """The README's SDK v2 HyperparameterTuner block, or docs/tuning.md's SDK v3 one."""
    doc, title = TUNING_SECTION if version == 2 else (TUNING_DOC, "From SDK v3")
    [snippet] = code_blocks(section(title, doc=doc), "python")
    return snippet


def localized_sdk_config(bucket: str, tmp: Path, text: str | None = None) -> Path:
    """examples/sdk/sagemaker-config.yaml (or `text`) with the test's bucket as the SDK's default bucket."""
    text = SDK_CONFIG.read_text() if text is None else text
    assert DEFAULT_BUCKET_LINE in text, "the SDK config no longer names the default bucket"
    path = tmp / "sagemaker-config.yaml"
    path.write_text(text.replace(DEFAULT_BUCKET_LINE, f"DefaultS3Bucket: {bucket}"))
    return path


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
    assert SDK_CONFIG_IN_README in exports
    exports = exports.replace(SDK_CONFIG_IN_README, str(localized_sdk_config(bucket, tmp)))
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
