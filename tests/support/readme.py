"""Code blocks of README.md, for the tests that run them as written."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"


def section(title: str) -> str:
    """The text of a `## <title>` section, up to the next `## ` heading."""
    return README.read_text().split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]


def code_blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", text, re.S)


def localize(code: str, *, api: str, s3: str, bucket: str, tmp: Path) -> str:
    """Point a README block at a test's server, S3 store, bucket and temp folder instead of the defaults."""
    return (code.replace("/tmp/", f"{tmp}/")
            .replace("http://localhost:8080", api)
            .replace("http://localhost:9000", s3)
            .replace("s3://workshop/", f"s3://{bucket}/"))
