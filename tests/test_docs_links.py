"""Every relative Markdown link in README.md and docs/*.md leads to a file that exists, and every
`#anchor` in one to a heading of the page it names (GitHub's heading ids)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
# The pages the README's "Where to go next" table sends a newcomer to.
DOCS_PAGES = ("s3-store.md", "sdk-and-script-mode.md", "logs-and-console.md", "configuration.md",
              "how-a-job-runs.md", "long-jobs.md", "input-modes.md", "testing.md", "tuning.md", "benchmarks.md",
              "architecture.md", "past-one-machine.md")
_LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
_FENCE = re.compile(r"^\s*(```|~~~)")
_HEADING = re.compile(r"^#{1,6} (.*?)\s*#*\s*$")


def unfenced(text: str) -> list[str]:
    """The lines outside fenced code blocks."""
    lines, fenced = [], False
    for line in text.splitlines():
        if _FENCE.match(line):
            fenced = not fenced
        elif not fenced:
            lines.append(line)
    return lines


def anchors(page: Path) -> set[str]:
    """GitHub's ids for the page's headings: lower case, punctuation dropped, spaces as hyphens."""
    seen: dict[str, int] = {}
    ids = set()
    for line in unfenced(page.read_text()):
        heading = _HEADING.match(line)
        if heading is None:
            continue
        slug = re.sub(r"[^\w\- ]", "", heading.group(1).lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        ids.add(slug if count == 0 else f"{slug}-{count}")
    return ids


def links(page: Path) -> list[str]:
    """The targets of the page's inline links, code blocks and code spans left out."""
    prose = "\n".join(unfenced(page.read_text()))
    return _LINK.findall(re.sub(r"`[^`\n]*`", "", prose))


def shown(path: Path) -> str:
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def broken_links(page: Path) -> list[str]:
    broken = []
    for target in links(page):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            broken.append(f"{target}: no {shown(dest)}")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target}: no heading #{anchor} in {shown(dest)}")
    return broken


def test_the_docs_pages_exist() -> None:
    missing = [name for name in DOCS_PAGES if not (REPO / "docs" / name).is_file()]
    assert missing == []


def test_the_readme_links_every_docs_page() -> None:
    linked = {(REPO / target.partition("#")[0]).resolve() for target in links(REPO / "README.md")}
    assert [name for name in DOCS_PAGES if (REPO / "docs" / name).resolve() not in linked] == []


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_lead_somewhere(page: Path) -> None:
    assert broken_links(page) == []


def test_the_checker_sees_a_broken_link(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("# A page\n\n[ok](#a-page) [gone](nowhere.md) [bad anchor](#nope) `[code](skipped.md)`\n"
                    "```sh\n[also code](skipped.md)\n```\n[web](https://example.com/x)\n")
    assert [b.split(":")[0] for b in broken_links(page)] == ["nowhere.md", "#nope"]
