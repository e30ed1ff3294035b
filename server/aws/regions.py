"""Which region names AWS knows, from the partition table that ships inside botocore."""

from __future__ import annotations

import functools

import botocore.session
import regex


@functools.lru_cache(maxsize=1)
def _partition_patterns() -> tuple[regex.Pattern[str], ...]:
    # botocore/data/partitions.json: each partition's `regionRegex`, e.g. aws:
    # ^(us|eu|ap|sa|ca|me|af|il|mx)\-\w+\-\d+$, aws-cn: ^cn\-\w+\-\d+$, aws-us-gov: ^us\-gov\-\w+\-\d+$.
    partitions = botocore.session.get_session().get_component("data_loader").load_data("partitions")
    return tuple(regex.compile(p["regionRegex"]) for p in partitions["partitions"])


def is_valid_region(name: str) -> bool:
    """True when `name` has the shape of a region in one of AWS's partitions (``eu-west-1``)."""
    # `\w` and `$` would also take non-ASCII letters and a trailing newline; region names have neither.
    if not name.isascii() or name != name.strip():
        return False
    return any(p.match(name) for p in _partition_patterns())
