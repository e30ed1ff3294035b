"""Where a test server keeps a job's log stream files (see smlocal/core/logstore.py for the layout)."""

from __future__ import annotations

from pathlib import Path


def stream_files(data_dir: Path, job_name: str, host: str = "algo-") -> list[Path]:
    """The stream files of every incarnation of `job_name` on that server, oldest first."""
    folders = sorted((data_dir / "logs").glob(f"*/*/{job_name}.*"), key=lambda f: int(f.name.rsplit(".", 1)[1]))
    return [stream for folder in folders for stream in sorted(folder.glob(f"{host}*"))]
