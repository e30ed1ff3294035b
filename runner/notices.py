"""What the platform itself writes into a job's log streams: what smlocal accepts but cannot do locally.

Each host's stream starts with these lines, stamped with the container's start (no line of the
algorithm is older), so `GetLogEvents` shows them first. They are written once, when the container is
started; a server that adopts the job after a restart continues the stream and writes nothing again.
"""

from __future__ import annotations

from smlocal.core.jobspec import JobSpec

ENCRYPTION_NOTICE = (
    "smlocal: EnableInterContainerTrafficEncryption is accepted but has no effect locally: the hosts of "
    "this job run on one machine and talk over a Docker network of their own, unencrypted.")


def platform_notices(spec: JobSpec) -> tuple[str, ...]:
    """The lines a host's log stream starts with (none for most jobs)."""
    return (ENCRYPTION_NOTICE,) if spec.inter_container_encryption else ()
