"""Docker log frames into log lines; where the lines are stored is `smlocal.core.logstore`.

The storage lives on the state side because the CloudWatch Logs provider reads what the runner
writes, and the wire layer must not import the runner. Its names are re-exported here for the
runner's modules.
"""

from __future__ import annotations

import re
from datetime import datetime

from smlocal.core.logstore import LogStreamWriter, list_streams, read_events, stream_name, stream_path

__all__ = ["LogStreamWriter", "list_streams", "read_events", "split_docker_timestamp",
           "stream_name", "stream_path"]

# Docker prefixes each line with RFC 3339 nano time when asked for timestamps.
_DOCKER_TS_RE = re.compile(rb"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d) ?")


def split_docker_timestamp(frame: bytes) -> tuple[int | None, bytes]:
    """Split a `docker logs --timestamps` frame into (epoch ms, payload)."""
    m = _DOCKER_TS_RE.match(frame)
    if not m:
        return None, frame
    base, fraction, zone = m.group(1).decode(), (m.group(2) or b"").decode(), m.group(3).decode()
    # datetime keeps microseconds; docker sends nanoseconds.
    iso = f"{base}.{fraction[:6].ljust(6, '0')}{'+00:00' if zone == 'Z' else zone}"
    return int(datetime.fromisoformat(iso).timestamp() * 1000), frame[m.end():]
