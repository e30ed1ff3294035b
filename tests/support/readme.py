"""Code blocks of README.md and docs/*.md, for the tests that run them as written."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
DOCS = REPO / "docs"
_FENCE = re.compile(r"^(```|~~~)")
_HEADING = re.compile(r"^(#{1,6}) (.*?)\s*$")


def section(title: str, doc: Path = README) -> str:
    """The text of the heading `title` (any level) in `doc`, up to the next heading of its level or higher.

    Lines inside fenced code blocks are never headings (a shell block's `# 1. ...` comments).
    """
    lines = doc.read_text().splitlines(keepends=True)
    start = level = None
    fenced = False
    for n, line in enumerate(lines):
        if _FENCE.match(line):
            fenced = not fenced
            continue
        heading = None if fenced else _HEADING.match(line)
        if heading is None:
            continue
        if start is None:
            if heading.group(2) == title:
                start, level = n + 1, len(heading.group(1))
        elif len(heading.group(1)) <= level:
            return "".join(lines[start:n])
    if start is None:
        raise LookupError(f"no heading {title!r} in {doc}")
    return "".join(lines[start:])


def code_blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", text, re.S)


def localize(code: str, *, api: str, s3: str, bucket: str, tmp: Path) -> str:
    """Point a README block at a test's server, S3 store, bucket and temp folder instead of the defaults."""
    return (code.replace("/tmp/", f"{tmp}/")
            .replace("http://localhost:8080", api)
            .replace("http://localhost:9000", s3)
            .replace("s3://workshop/", f"s3://{bucket}/"))
