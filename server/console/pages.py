"""What the console's groups of pages share, made once by `create_console` and handed to each group."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from fastapi import Request
from fastapi.responses import HTMLResponse, Response

from smlocal.core.errors import ApiError

# A page shown again after a button's operation failed: (request, HTTP status, (operation, its error)).
PageAgain = Callable[[Request, int, tuple[str, ApiError]], HTMLResponse]


class Render(Protocol):
    def __call__(self, template: str, http_status: int = 200, **context: Any) -> HTMLResponse: ...


class Link(Protocol):
    def __call__(self, path: str, region: str, **params: Any) -> str: ...


class Act(Protocol):
    def __call__(self, request: Request, operation: str, action: Callable[[str], None], done: str,
                 again: PageAgain) -> Awaitable[Response]: ...


@dataclass(frozen=True)
class Pages:
    """region_of: the region a request asks for (an InvalidRegion page otherwise); link: a console URL that
    keeps that region; render: a template with the console's common context; act: a button's POST (token and
    origin checked, then the operation; `done` on success, `again` with the error otherwise)."""

    region_of: Callable[[Request], str]
    link: Link
    render: Render
    act: Act
