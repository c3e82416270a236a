"""Several mock server processes sharing one port, so a benchmark measures the client.

Each worker is `python -m llmstreams.mock --workers 1 --reuse-port ...` (the `llmstreams mock`
command, without importing the other commands); the kernel spreads the connections over them
(SO_REUSEPORT, Linux). The parent picks the port by binding a SO_REUSEPORT socket and keeps it
bound, never listening, so nothing else can take the port while the workers run.

Every worker holds the read end of a pipe whose write end only the parent holds: when the parent
ends in any way (SIGKILL included) the kernel closes the write end, the workers read end-of-file
and stop. (PR_SET_PDEATHSIG would fire when the parent's spawning *thread* ends, which
`async with` does at once, since it starts the workers from a worker thread.)
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import selectors
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import attrs

from llmstreams.mock.behaviour import KNOB_NAMES
from llmstreams.mock.credentials import MockCredentials
from llmstreams.mock.qianfan_auth import TOKEN_KEY_ENV
from llmstreams.mock.stats import SharedCounters
from llmstreams.mock.tls import CertificateFiles

READY_PREFIX = "llmstreams mock listening on "
PARENT_FD_OPTION = "--parent-fd"
STATS_FILE_OPTION = "--stats-file"
STATS_ROWS_OPTION = "--stats-rows"
STATS_ROW_OPTION = "--stats-row"
_STOP_TIMEOUT = 5.0


def ready_line(url: str, workers: int) -> str:
    """The line the `llmstreams mock` command prints once it accepts connections."""
    return f"{READY_PREFIX}{url} ({workers} worker{'' if workers == 1 else 's'})"


def spawn_mock_workers(
    workers: int,
    port: int = 0,
    *,
    host: str = "127.0.0.1",
    credentials: MockCredentials | None = None,
    token_ttl: int | None = None,
    trigger_phrase: str | None = None,
    ready_timeout: float = 15.0,
    certificate: CertificateFiles | None = None,
    **knobs: Any,
) -> MockWorkers:
    """`workers` mock server processes on one port; a context manager yielding the base URL.

    Use `with spawn_mock_workers(4) as url:` or `async with ...`. `knobs` are `Behaviour` field
    names (`first_chunk_delay=0.2`, `trickle=True`, ...). With `certificate`, they serve HTTPS.
    Leaving the block terminates the workers.
    """
    unknown = sorted(set(knobs) - set(KNOB_NAMES))
    if unknown:
        raise TypeError(f"unknown knobs: {', '.join(unknown)}; known: {', '.join(KNOB_NAMES)}")
    if workers < 1:
        raise ValueError("workers must be at least 1")
    options: list[str] = []
    if token_ttl is not None:
        options += ["--token-ttl", str(token_ttl)]
    if trigger_phrase is not None:
        options += ["--trigger-phrase", trigger_phrase]
    if certificate is not None:
        options += ["--certfile", str(certificate.certfile)]
        if certificate.keyfile is not None:
            options += ["--keyfile", str(certificate.keyfile)]
    for name, value in knobs.items():
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            options += [flag] if value else []
        elif value is not None:
            options += [flag, str(value)]
    return MockWorkers(
        workers=workers,
        host=host,
        port=port,
        options=options,
        credentials=credentials,
        ready_timeout=ready_timeout,
        scheme="http" if certificate is None else "https",
    )


@attrs.define(kw_only=True, eq=False, repr=False)
class MockWorkers:
    """Running worker processes; see `spawn_mock_workers`."""

    _workers: int
    _host: str
    _requested_port: int = attrs.field(alias="port")
    _options: list[str]
    _credentials: MockCredentials | None
    _ready_timeout: float
    _scheme: str = "http"
    _reservation: socket.socket | None = attrs.field(init=False, default=None)
    _work_dir: tempfile.TemporaryDirectory[str] | None = attrs.field(init=False, default=None)
    _processes: list[subprocess.Popen[bytes]] = attrs.field(init=False, factory=list)
    _lifeline: int | None = attrs.field(init=False, default=None)
    """The write end of the pipe whose end-of-file tells the workers to stop."""
    url: str = attrs.field(init=False, default="")

    def start(self) -> str:
        """Start the workers and wait until each accepts connections; returns the base URL."""
        try:
            self._reservation = _reserve_port(self._host, self._requested_port)
            port = self._reservation.getsockname()[1]
            command = [sys.executable, "-m", "llmstreams.mock", "--host", self._host]
            command += ["--port", str(port), "--workers", "1", "--reuse-port", *self._options]
            self._work_dir = tempfile.TemporaryDirectory(prefix="llmstreams-mock-")
            command += self._credentials_option(Path(self._work_dir.name))
            stats_file = Path(self._work_dir.name) / "stats"
            SharedCounters.create_file(stats_file, self._workers)
            command += [STATS_FILE_OPTION, str(stats_file), STATS_ROWS_OPTION, str(self._workers)]
            env = _child_env()
            env[TOKEN_KEY_ENV] = secrets.token_hex(32)
            lifeline, self._lifeline = os.pipe()
            try:
                command += [PARENT_FD_OPTION, str(lifeline)]
                self._processes = [
                    subprocess.Popen(
                        [*command, STATS_ROW_OPTION, str(row)],
                        stdin=subprocess.DEVNULL,
                        stdout=subprocess.PIPE,
                        env=env,
                        pass_fds=(lifeline,),
                    )
                    for row in range(self._workers)
                ]
            finally:
                os.close(lifeline)
            deadline = time.monotonic() + self._ready_timeout
            for process in self._processes:
                line = _read_line(process, deadline)
                if not line.startswith(READY_PREFIX):
                    raise RuntimeError(f"unexpected first line from a mock worker: {line!r}")
        except BaseException:
            self.stop()
            raise
        host = f"[{self._host}]" if ":" in self._host else self._host
        self.url = f"{self._scheme}://{host}:{port}"
        return self.url

    def stop(self) -> None:
        """Terminate the workers (SIGTERM, then SIGKILL after a grace period) and free the port."""
        for process in self._processes:
            if process.poll() is None:
                process.terminate()
        for process in self._processes:
            try:
                process.wait(_STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            if process.stdout is not None:
                process.stdout.close()
        self._processes = []
        if self._lifeline is not None:
            os.close(self._lifeline)
            self._lifeline = None
        if self._reservation is not None:
            self._reservation.close()
            self._reservation = None
        if self._work_dir is not None:
            self._work_dir.cleanup()
            self._work_dir = None

    def exited(self) -> list[int]:
        """Exit codes of the workers that have stopped (none, while all are healthy)."""
        return [
            code for code in (process.poll() for process in self._processes) if code is not None
        ]

    def _credentials_option(self, directory: Path) -> list[str]:
        if self._credentials is None:
            return []
        path = directory / "credentials.json"
        path.touch(mode=0o600)
        path.write_text(json.dumps(attrs.asdict(self._credentials)))
        return ["--credentials", str(path)]

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    async def __aenter__(self) -> str:
        return await asyncio.to_thread(self.start)

    async def __aexit__(self, *exc_info: object) -> None:
        await asyncio.to_thread(self.stop)


def _reserve_port(host: str, port: int) -> socket.socket:
    family, kind, protocol, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    if port != 0:
        # SO_REUSEPORT would let us share a port another server listens on: make sure it is free.
        with socket.socket(family, kind, protocol) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(address)
    sock = socket.socket(family, kind, protocol)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
    except BaseException:
        sock.close()
        raise
    return sock


def _child_env() -> dict[str, str]:
    """The environment of a worker: ours, with this very llmstreams package importable."""
    package_root = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
    return env


def _read_line(process: subprocess.Popen[bytes], deadline: float) -> str:
    """The first line `process` writes to stdout, waiting until `deadline` (monotonic) at most."""
    assert process.stdout is not None
    descriptor = process.stdout.fileno()
    received = b""
    with selectors.DefaultSelector() as selector:
        selector.register(descriptor, selectors.EVENT_READ)
        while b"\n" not in received:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not selector.select(remaining):
                raise TimeoutError("a mock worker did not report ready in time")
            data = os.read(descriptor, 4096)
            if not data:
                raise RuntimeError(f"a mock worker exited before it was ready: {process.wait()}")
            received += data
    return received.split(b"\n", 1)[0].decode()
