"""`smlocal shell`: a way into a running host, through the server (ExecuteCommand, StartSession and its
WebSocket), run as a user runs it against real servers and real containers.

SageMaker's rules it keeps (developer guide, train-remote-debugging.html): a host can be entered while
the job is Training, only with RemoteDebugConfig.EnableRemoteDebug, which UpdateTrainingJob may turn on
while the job is Downloading or Training.
"""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.credentials import Credentials
from botocore.exceptions import ClientError
from websockets.sync.client import connect

from server import shell_client
from tests.support.console import get, text_of
from tests.support.jobs import wait_for_status
from tests.support.logs import stream_files
from tests.support.runner_jobs import FINAL, log_messages, sh_job, wait_until
from tests.support.smlocal import SmlocalServer

SERVER = "runner_server"  # `sm` and `s3` are clients of the runner plugin's server (tests/conftest.py)

SMLOCAL = str(Path(sys.executable).parent / "smlocal")
REMOTE_DEBUG = {"EnableRemoteDebug": True}
TWO_HOSTS = {"InstanceType": "ml.m5.large", "InstanceCount": 2, "VolumeSizeInGB": 10}
# Trains until it is stopped (and ends at once on SIGTERM).
UNTIL_STOPPED = "trap 'exit 0' TERM; while true; do sleep 1; done"


def cli_env(server: SmlocalServer, key: str = "test", secret: str = "test") -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SMLOCAL_", "AWS_"))}
    env.update({"SMLOCAL_ENDPOINT_URL": server.endpoint, "COLUMNS": "200", "AWS_ACCESS_KEY_ID": key,
                "AWS_SECRET_ACCESS_KEY": secret, "AWS_DEFAULT_REGION": "us-east-1"})
    return env


def smlocal(server: SmlocalServer, *args: str, stdin: str | None = None,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([SMLOCAL, *args], input=stdin, capture_output=True, text=True,
                          env=env or cli_env(server), timeout=120)


def start_running(server: SmlocalServer, sm: Any, name: str, **overrides: Any) -> None:
    """A job whose containers run (every host's log stream has begun) until it is stopped."""
    sm.create_training_job(**sh_job(name, UNTIL_STOPPED, **overrides))
    hosts = (overrides.get("ResourceConfig") or {}).get("InstanceCount", 1)
    wait_until(lambda: all(stream_files(server.data_dir, name, f"algo-{i}-") for i in range(1, hosts + 1)), 90,
               f"{name}'s containers to start")


@pytest.fixture()
def running(runner_server: SmlocalServer, sm: Any, s3: Any, unique_name: Callable[[str], str]
            ) -> Iterator[Callable[..., str]]:
    """Starts jobs that run until stopped (RemoteDebugConfig on unless given); stops them at the end."""
    started: list[str] = []

    def start(prefix: str = "shell", **overrides: Any) -> str:
        name = unique_name(prefix)
        overrides.setdefault("RemoteDebugConfig", REMOTE_DEBUG)
        started.append(name)
        start_running(runner_server, sm, name, **overrides)
        return name

    yield start
    for name in started:
        try:
            sm.stop_training_job(TrainingJobName=name)
        except ClientError:
            pass  # it ended already
        wait_for_status(sm, name, FINAL, timeout=60)


def test_a_command_prints_its_output_and_exits_with_its_code(
        runner_server: SmlocalServer, sm: Any, running: Callable[..., str]) -> None:
    name = running()
    result = smlocal(runner_server, "shell", name, "--", "sh", "-c", "echo hi; echo oops >&2; exit 3")
    assert result.returncode == 3, result.stderr
    assert result.stdout == "hi\n"
    assert result.stderr == "oops\n"
    # It ran in the job's container: its host name, the job's /opt/ml.
    where = smlocal(runner_server, "shell", name, "--", "sh", "-c",
                    "hostname; test -f /opt/ml/input/config/resourceconfig.json && echo has-resourceconfig")
    assert (where.returncode, where.stdout) == (0, "algo-1\nhas-resourceconfig\n"), where.stderr
    # The log says how to get in, first in the host's stream.
    notice = log_messages(runner_server, name)[0]
    assert f"smlocal shell {name} --host algo-1 --region us-east-1" in notice, notice
    assert f"sagemaker-training-job:{name}_algo-1" in notice


def test_the_console_shows_the_command_for_a_job_in_training(
        runner_server: SmlocalServer, running: Callable[..., str]) -> None:
    name = running()
    page = get(runner_server, f"/console/jobs/{name}")
    assert page.status_code == 200
    assert f"Open a shell in a host: smlocal shell {name} --region us-east-1" in text_of(page.text)


def test_a_shell_reads_commands_piped_into_it(runner_server: SmlocalServer, running: Callable[..., str]) -> None:
    name = running()
    result = smlocal(runner_server, "shell", name, stdin="hostname\necho $((6 * 7))\necho to-stderr >&2\nexit 5\n")
    assert result.returncode == 5, result.stderr
    assert result.stdout == "algo-1\n42\n"
    assert "to-stderr" in result.stderr
    # Without an exit, the end of stdin ends the shell.
    ended = smlocal(runner_server, "shell", name, stdin="echo last\n")
    assert (ended.returncode, ended.stdout) == (0, "last\n"), ended.stderr


def test_a_terminal_gets_a_terminal_in_the_host(runner_server: SmlocalServer, running: Callable[..., str]) -> None:
    name = running()
    controller, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 33, 101, 0, 0))
    process = subprocess.Popen([SMLOCAL, "shell", name], stdin=terminal, stdout=terminal, stderr=terminal,
                               env={**cli_env(runner_server), "TERM": "xterm"}, start_new_session=True)
    os.close(terminal)
    screen = bytearray()

    def read_until(pattern: bytes, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not re.search(pattern, screen):
            assert time.monotonic() < deadline, f"no {pattern!r} on the screen: {bytes(screen)!r}"
            if select.select([controller], [], [], 0.5)[0]:
                try:
                    screen.extend(os.read(controller, 4096))
                except OSError:  # the other end closed
                    return

    try:
        # The remote shell's prompt (busybox ash follows it with a cursor position query, and needs no
        # answer): the session runs, and this terminal is raw.
        read_until(rb"/ [#$] ")
        os.write(controller, b"tty; stty size; echo $TERM; exit 7\r")
        assert process.wait(timeout=60) == 7
        read_until(rb"Exiting session")
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        os.close(controller)
    text = screen.decode(errors="replace")
    assert "Starting session with SessionId:" in text
    assert re.search(r"/dev/pts/\d+\r\n33 101\r\nxterm\r\n", text), text


def test_a_host_of_a_two_host_job_and_a_host_it_does_not_have(
        runner_server: SmlocalServer, running: Callable[..., str]) -> None:
    name = running(ResourceConfig=TWO_HOSTS)
    one = smlocal(runner_server, "shell", name, "--host", "algo-2", "--", "hostname")
    assert (one.returncode, one.stdout) == (0, "algo-2\n"), one.stderr
    piped = smlocal(runner_server, "shell", name, "--host", "algo-2", stdin="hostname\n")
    assert (piped.returncode, piped.stdout) == (0, "algo-2\n"), piped.stderr
    first = smlocal(runner_server, "shell", name, "--", "hostname")
    assert first.stdout == "algo-1\n", first.stderr

    for args, stdin in (([], "hostname\n"), (["--", "hostname"], None)):
        missing = smlocal(runner_server, "shell", name, "--host", "algo-3", *args, stdin=stdin)
        assert missing.returncode == 1
        assert missing.stderr.strip() == (f"error (ValidationException): Training job {name} has no host algo-3: "
                                          "its hosts are algo-1, algo-2.")
        assert missing.stdout == ""


def test_a_job_that_ended_is_a_clear_error(runner_server: SmlocalServer, sm: Any, s3: Any,
                                           unique_name: Callable[[str], str]) -> None:
    name = unique_name("ended")
    sm.create_training_job(**sh_job(name, "echo done", RemoteDebugConfig=REMOTE_DEBUG))
    ended = wait_for_status(sm, name, FINAL, timeout=90)
    assert ended["TrainingJobStatus"] == "Completed", ended.get("FailureReason")
    expected = (f"error (ValidationException): Training job {name} is not running: it is Completed (Completed). "
                "A host can be entered only while the job is InProgress and Training.")
    for args, stdin in (([], "hostname\n"), (["--", "hostname"], None)):
        result = smlocal(runner_server, "shell", name, *args, stdin=stdin)
        assert (result.returncode, result.stderr.strip(), result.stdout) == (1, expected, "")
    # Remote debugging cannot be changed any more either (SageMaker: while Downloading or Training only).
    with pytest.raises(ClientError) as refused:
        sm.update_training_job(TrainingJobName=name, RemoteDebugConfig={"EnableRemoteDebug": False})
    assert refused.value.response["Error"]["Code"] == "ValidationException"
    assert "Downloading or Training" in refused.value.response["Error"]["Message"]

    unknown = smlocal(runner_server, "shell", unique_name("never-created"), "--", "true")
    assert (unknown.returncode, unknown.stderr.strip()) == (1, "error (ValidationException): Requested resource "
                                                               "not found.")


def test_a_job_that_has_not_started_is_a_clear_error(api_server: SmlocalServer,
                                                     unique_name: Callable[[str], str]) -> None:
    # The API-only server never starts containers: the job stays Starting.
    name = unique_name("starting")
    api_server.client().create_training_job(**sh_job(name, "true", RemoteDebugConfig=REMOTE_DEBUG))
    result = smlocal(api_server, "shell", name, stdin="hostname\n")
    assert result.returncode == 1
    assert result.stderr.strip() == (f"error (ValidationException): Training job {name} is not running: it is "
                                     "InProgress (Starting). A host can be entered only while the job is InProgress "
                                     "and Training.")


def test_remote_debugging_is_required_and_update_training_job_turns_it_on(
        runner_server: SmlocalServer, sm: Any, running: Callable[..., str]) -> None:
    name = running("nodebug", RemoteDebugConfig={"EnableRemoteDebug": False})
    refused = smlocal(runner_server, "shell", name, "--", "true")
    assert refused.returncode == 1
    assert refused.stderr.strip() == (
        f"error (ValidationException): Remote debugging is not enabled for training job {name}. Enable it with "
        "RemoteDebugConfig={EnableRemoteDebug=true} when you create the job, or while it is Downloading or "
        f"Training: aws sagemaker update-training-job --training-job-name {name} --remote-debug-config "
        "EnableRemoteDebug=true")
    assert not any("remote debugging is enabled" in m for m in log_messages(runner_server, name))

    sm.update_training_job(TrainingJobName=name, RemoteDebugConfig={"EnableRemoteDebug": True})
    assert sm.describe_training_job(TrainingJobName=name)["RemoteDebugConfig"] == {"EnableRemoteDebug": True}
    allowed = smlocal(runner_server, "shell", name, "--", "hostname")
    assert (allowed.returncode, allowed.stdout) == (0, "algo-1\n"), allowed.stderr

    sm.update_training_job(TrainingJobName=name, RemoteDebugConfig={"EnableRemoteDebug": False})
    assert smlocal(runner_server, "shell", name, "--", "true").returncode == 1


def test_execute_command_keeps_a_mebibyte_of_output_and_answers_a_command_that_runs_on(
        runner_server: SmlocalServer, running: Callable[..., str]) -> None:
    name = running()
    control = runner_server.client("smlocal")
    big = control.execute_command(TrainingJobName=name, Command=["sh", "-c", "head -c 3000000 /dev/zero; echo x >&2"])
    assert (big["ExitCode"], big["OutputTruncated"]) == (0, True)
    assert big["StandardOutput"] == "\0" * (1024 * 1024)
    assert big["StandardError"] == "x\n"

    slow = control.execute_command(TrainingJobName=name, Command=["sleep", "600"], TimeoutInSeconds=1)
    assert slow["TimedOut"] is True and "ExitCode" not in slow
    result = smlocal(runner_server, "shell", name, "--timeout", "1", "--", "sh", "-c", "echo started; sleep 600")
    assert result.returncode == 124
    assert result.stdout == "started\n"
    assert "did not end within 1 s" in result.stderr


def test_the_stream_needs_a_signature_when_the_server_requires_sigv4(
        smlocal_factory: Callable[..., SmlocalServer], docker_engine: Any,
        unique_name: Callable[[str], str]) -> None:
    key, secret = "AKIASHELLTEST", "shell-test-secret"
    server = smlocal_factory("--access-key", key, "--secret-key", secret, "--stop-grace-seconds", "1")
    sm = server.client(access_key=key, secret_key=secret)
    name = unique_name("signed")
    start_running(server, sm, name, RemoteDebugConfig=REMOTE_DEBUG)
    try:
        started = server.client("smlocal", access_key=key, secret_key=secret).start_session(TrainingJobName=name)
        url = server.endpoint.replace("http://", "ws://") + started["StreamUrl"]
        token = {"X-Smlocal-Session-Token": started["TokenValue"]}
        # With the session's token but unsigned: refused before anything runs, as any unsigned API call.
        with pytest.raises(Exception) as unsigned:
            connect(url, additional_headers=token)
        assert unsigned.value.response.status_code == 403
        assert b"MissingAuthenticationTokenException" in unsigned.value.response.body
        # Signed with a key the server does not have: refused too.
        with pytest.raises(shell_client.StreamRefused) as wrong:
            shell_client.open_stream(server.endpoint, started["StreamUrl"], started["TokenValue"], "us-east-1",
                                     Credentials("AKIAOTHER", secret).get_frozen_credentials())
        assert wrong.value.code == "UnrecognizedClientException"
        # Signed right, the same token opens it (once).
        with shell_client.open_stream(server.endpoint, started["StreamUrl"], started["TokenValue"], "us-east-1",
                                      Credentials(key, secret).get_frozen_credentials()) as ws:
            ws.send(b"hostname\nexit 4\n")
            received = list(ws)
        output = [m for m in received if isinstance(m, bytes)]
        assert b"".join(m[1:] for m in output) == b"algo-1\n" and {m[0] for m in output} == {1}  # stdout
        assert received[-1] == '{"exit": 4}'
        with pytest.raises(shell_client.StreamRefused) as again:
            shell_client.open_stream(server.endpoint, started["StreamUrl"], started["TokenValue"], "us-east-1",
                                     Credentials(key, secret).get_frozen_credentials())
        assert again.value.code == "AccessDeniedException"

        # The CLI signs as any client: with the server's keys it gets in, without them it does not.
        ok = smlocal(server, "shell", name, stdin="hostname\n", env=cli_env(server, key, secret))
        assert (ok.returncode, ok.stdout) == (0, "algo-1\n"), ok.stderr
        denied = smlocal(server, "shell", name, "--", "hostname")
        assert denied.returncode == 1
        assert "UnrecognizedClientException" in denied.stderr
    finally:
        sm.stop_training_job(TrainingJobName=name)
        wait_for_status(sm, name, FINAL, timeout=60)
