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

from tests.support.readme import code_blocks, localize, section
from tests.support.sdk import Guard, clean_environment, ensure_sdk, make_guard
from tests.support.smlocal import SmlocalServer

REPO_ROOT = Path(__file__).resolve().parents[2]
SDK_SECTION = "The SageMaker Python SDK"


def readme_environment() -> str:
    """The README's block of `export`s that make unmodified SDK code work."""
    [exports] = code_blocks(section(SDK_SECTION), "sh")
    return exports


def readme_snippet(version: int) -> str:
    v2, v3 = code_blocks(section(SDK_SECTION), "python")
    return {2: v2, 3: v3}[version]


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


def run_guarded(version: int, script: str, server: SmlocalServer, bucket: str, tmp: Path,
                timeout: float = 600) -> SdkRun:
    """Run `script` with SDK v<version>, the README's exports in front, and record job statuses meanwhile."""
    python = ensure_sdk(version)
    allowed = sorted({urlparse(server.endpoint).hostname or "", urlparse(server.s3_endpoint).hostname or ""})
    guard, guard_env = make_guard(tmp / "guard", allowed)
    env = {**clean_environment(tmp / "home"), **guard_env}
    exports = localize(readme_environment(), api=server.endpoint, s3=server.s3_endpoint, bucket=bucket, tmp=tmp)
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
