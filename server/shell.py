"""The WebSocket an interactive `smlocal shell` streams over: the StreamUrl a StartSession answered.

Opening it takes the session's single-use token (header `X-Smlocal-Session-Token`) and, when the server
requires SigV4, a signature for service `smlocal` on the upgrade request, as any API call; a refusal is an
HTTP answer with AWS's JSON error body, before any process starts. Then the process's output goes out
as binary messages (one leading byte: 1 stdout, 2 stderr), its input comes in as binary messages, and JSON
text messages carry the rest: `{"resize": [rows, cols]}` and `{"eof": true}` in, `{"exit": code}` out
just before the server closes.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import threading
from typing import Any

from fastapi import FastAPI, WebSocket
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.websockets import WebSocketDisconnect

from server.aws.auth import Authenticator
from server.aws.protocol import new_request_id
from server.services.smlocal.host_access import STREAM_PATH, TOKEN_HEADER, HostAccess, HostProcess
from server.services.smlocal.model import SERVICE_NAME
from smlocal.core.errors import ApiError

log = logging.getLogger("smlocal.server")

# Output chunks waiting for a slow client; past this the reader waits, and so does the process.
OUTPUT_QUEUE_CHUNKS = 64


def _refusal(error: ApiError) -> JSONResponse:
    request_id = new_request_id()
    return JSONResponse({"__type": error.code, "Message": error.message}, error.status,
                        headers={"x-amzn-RequestId": request_id, "x-amzn-ErrorType": error.code},
                        media_type="application/x-amz-json-1.1")


def mount_shell(app: FastAPI, hosts: HostAccess, authenticator: Authenticator) -> None:
    @app.websocket(STREAM_PATH + "/{session_id}/stream")
    async def session_stream(websocket: WebSocket, session_id: str) -> None:
        try:
            authenticator.authenticate("GET", str(websocket.url), dict(websocket.headers), b"",
                                       signing_name=SERVICE_NAME)
            process, _tty = await run_in_threadpool(hosts.attach, session_id,
                                                    websocket.headers.get(TOKEN_HEADER, ""))
        except ApiError as error:
            await websocket.send_denial_response(_refusal(error))
            return
        except Exception:  # noqa: BLE001 - the client gets AWS's error shape, never a stack trace
            log.exception("shell session %s could not start", session_id)
            await websocket.send_denial_response(_refusal(ApiError(
                "InternalFailure", "The request processing has failed because of an unknown error.", 500)))
            return
        await websocket.accept()
        try:
            await _relay(websocket, process)
        finally:
            await run_in_threadpool(process.close)


async def _relay(websocket: WebSocket, process: HostProcess) -> None:
    """Until the process ends (its exit code goes out) or the client goes."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[int, bytes] | None] = asyncio.Queue(OUTPUT_QUEUE_CHUNKS)
    done = threading.Event()

    def put(item: tuple[int, bytes] | None) -> bool:
        try:
            future = asyncio.run_coroutine_threadsafe(queue.put(item), loop)
        except RuntimeError:  # the server is shutting down: its loop is closed
            return False
        while not done.is_set():
            try:
                future.result(timeout=1.0)
                return True
            except concurrent.futures.TimeoutError:
                continue
        future.cancel()
        return False

    def read_output() -> None:
        # A thread of its own: read() blocks for as long as the process is quiet.
        try:
            while True:
                stream, data = process.read()
                if not data or not put((stream, data)):
                    break
        except Exception as e:  # noqa: BLE001 - the engine hung up: the session ends
            log.debug("shell session output ended: %s", e)
        finally:
            put(None)

    async def send_output() -> None:
        while (item := await queue.get()) is not None:
            await websocket.send_bytes(bytes([item[0]]) + item[1])
        code = await run_in_threadpool(process.exit_code)
        await websocket.send_text(json.dumps({"exit": code}))
        await websocket.close()

    async def receive_input() -> None:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            if message.get("bytes") is not None:
                await run_in_threadpool(_quietly, process.write, message["bytes"])
            elif message.get("text") is not None:
                await run_in_threadpool(_control, process, message["text"])

    reader = threading.Thread(target=read_output, name="smlocal-shell-output", daemon=True)
    reader.start()
    tasks = [asyncio.create_task(send_output()), asyncio.create_task(receive_input())]
    try:
        finished, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in finished:
            error = task.exception()
            if error is not None and not isinstance(error, (WebSocketDisconnect, RuntimeError, OSError)):
                raise error
    finally:
        done.set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _control(process: HostProcess, text: str) -> None:
    try:
        message: Any = json.loads(text)
    except ValueError:
        return
    if not isinstance(message, dict):
        return
    resize = message.get("resize")
    if isinstance(resize, list) and len(resize) == 2 and all(isinstance(n, int) and 0 < n < 10_000 for n in resize):
        _quietly(process.resize, resize[0], resize[1])
    if message.get("eof") is True:
        _quietly(process.close_input)


def _quietly(call: Any, *args: Any) -> None:
    """Input for a process that already ended goes nowhere; its end reaches the client as its exit."""
    try:
        call(*args)
    except Exception as e:  # noqa: BLE001 - a closed connection, or the engine's refusal to resize an ended exec
        log.debug("shell session input dropped: %s", e)
