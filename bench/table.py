"""The Markdown table every bench row module prints when run alone (`python -m bench.<module>`)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

HEADER = ("| measurement | smlocal | baseline (same run) | result |", "| --- | --- | --- | --- |")


def print_rows(rows: Iterable[Sequence[str]]) -> None:
    for line in HEADER:
        print(line)
    for row in rows:
        print("| " + " | ".join(row) + " |")
