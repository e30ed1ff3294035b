"""The input seam's exceptions, raised by every provider (runner.inputs.provider tells when).

A module of its own so that the seam and the providers' helpers (File mode's staging, Pipe's sources)
import them from beside the seam, not from one another.
"""

from __future__ import annotations


class DataDownloadError(Exception):
    """The channel cannot be staged; `reason` is the job's FailureReason."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class DownloadCancelled(Exception):
    """The job was stopped (or the server is shutting down) while data was downloading."""
