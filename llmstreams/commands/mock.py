"""`llmstreams mock`: serve the Qianfan/DashScope mock until SIGINT or SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import errno
import json
import os
import signal
import sys
import tempfile
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path
from ssl import SSLContext
from typing import Any

import attrs

from llmstreams.mock.behaviour import KNOB_NAMES, Behaviour, BehaviourError, with_knobs
from llmstreams.mock.credentials import MockCredentials
from llmstreams.mock.qianfan_auth import TOKEN_KEY_ENV
from llmstreams.mock.server import DEFAULT_TOKEN_TTL, DEFAULT_TRIGGER_PHRASE, MockServer
from llmstreams.mock.stats import SharedCounters
from llmstreams.mock.tls import CertificateError, CertificateFiles, make_certificate, server_context
from llmstreams.mock.workers import (
    PARENT_FD_OPTION,
    STATS_FILE_OPTION,
    STATS_ROW_OPTION,
    STATS_ROWS_OPTION,
    MockWorkers,
    ready_line,
    spawn_mock_workers,
)

# How often a multi-worker supervisor checks that its workers are still alive.
_WORKER_CHECK_INTERVAL = 1.0


_DESCRIPTION = (
    "Serve a local mock of the Baidu Qianfan and Alibaba DashScope text generation APIs. "
    "Prints one line 'llmstreams mock listening on URL (N workers)' once ready and "
    "serves until SIGINT or SIGTERM. Knob flags set the server-wide Behaviour; a request "
    "can override them with the header 'X-Mock-Behaviour: key=value; key=value'. "
    "With --tls it serves HTTPS with a certificate made for the run, and prints a second line "
    "naming the CA file to trust (SSL_CERT_FILE=...)."
)


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "mock",
        help="serve a local mock of the Qianfan and DashScope APIs",
        description=_DESCRIPTION,
    )
    _add_arguments(parser)


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m llmstreams.mock`: this command alone, importing none of the other commands."""
    parser = argparse.ArgumentParser(prog="llmstreams mock", description=_DESCRIPTION)
    _add_arguments(parser)
    return run(parser.parse_args(argv))


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port to bind, 0 for any (8000)")
    parser.add_argument(
        "--workers", type=int, default=1, help="processes sharing the port (SO_REUSEPORT)"
    )
    parser.add_argument(
        "--reuse-port", action="store_true", help="bind with SO_REUSEPORT (set for workers)"
    )
    parser.add_argument(
        "--credentials",
        metavar="FILE",
        type=Path,
        help="JSON file of credentials to enforce: api_key, secret_key, access_key, "
        "secret_access_key, dashscope_api_key (any subset); without it any key is accepted",
    )
    parser.add_argument(
        "--tls",
        action="store_true",
        help="serve HTTPS with a certificate signed by a CA made for this run (needs trustme: "
        "pip install 'llmstreams[mock]'); the CA file is printed after the ready line",
    )
    parser.add_argument(
        "--certfile", metavar="FILE", type=Path, help="serve HTTPS with this PEM certificate chain"
    )
    parser.add_argument(
        "--keyfile", metavar="FILE", type=Path,
        help="the private key of --certfile (when it is not in the same file)",
    )
    parser.add_argument(PARENT_FD_OPTION, type=int, help=argparse.SUPPRESS)
    parser.add_argument(STATS_FILE_OPTION, type=Path, help=argparse.SUPPRESS)
    parser.add_argument(STATS_ROWS_OPTION, type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument(STATS_ROW_OPTION, type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--token-ttl", type=int, default=DEFAULT_TOKEN_TTL, help="seconds")
    parser.add_argument("--trigger-phrase", default=DEFAULT_TRIGGER_PHRASE)
    knobs = parser.add_argument_group("knobs (see docs/mock.md)")
    for field in attrs.fields(Behaviour):
        flag = "--" + field.name.replace("_", "-")
        if isinstance(field.default, bool):
            knobs.add_argument(flag, dest=field.name, action="store_true")
        else:
            knobs.add_argument(
                flag, dest=field.name, metavar="VALUE", help=f"default {field.default}"
            )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    knob_texts = _knob_texts(args)
    try:
        behaviour = with_knobs(Behaviour(), knob_texts)
        credentials = _read_credentials(args.credentials)
    except (BehaviourError, OSError, ValueError, TypeError) as error:
        print(f"llmstreams mock: {error}", file=sys.stderr)
        return 2
    with ExitStack() as cleanup:
        try:
            certificate = _certificate(args, cleanup)
            context = None if certificate is None else server_context(certificate)
        except CertificateError as error:
            print(f"llmstreams mock: {error}", file=sys.stderr)
            return 2
        try:
            return _run_servers(args, behaviour, credentials, knob_texts, certificate, context)
        except OSError as error:
            if error.errno != errno.EADDRINUSE:
                raise
            print(
                f"llmstreams mock: port {args.port} on {args.host} is already in use; "
                "choose another with --port, or --port 0 for any free port",
                file=sys.stderr,
            )
            return 1


def _run_servers(
    args: argparse.Namespace,
    behaviour: Behaviour,
    credentials: MockCredentials | None,
    knob_texts: list[tuple[str, str]],
    certificate: CertificateFiles | None,
    context: SSLContext | None,
) -> int:
    notice = _trust_notice(certificate)
    if args.workers > 1:
        workers = spawn_mock_workers(
            args.workers,
            args.port,
            host=args.host,
            credentials=credentials,
            token_ttl=args.token_ttl,
            trigger_phrase=args.trigger_phrase,
            certificate=certificate,
            **{name: getattr(behaviour, name) for name, _ in knob_texts},
        )
        return asyncio.run(_supervise(workers, args.workers, notice))
    server = MockServer(
        host=args.host,
        port=args.port,
        behaviour=behaviour,
        credentials=credentials,
        token_ttl=args.token_ttl,
        trigger_phrase=args.trigger_phrase,
        reuse_port=args.reuse_port,
        token_key=_shared_token_key(),
        shared_stats=_shared_stats(args),
        ssl=context,
    )
    return asyncio.run(_serve(server, args.parent_fd, notice))


def _certificate(args: argparse.Namespace, cleanup: ExitStack) -> CertificateFiles | None:
    """The certificate to serve: the user's (--certfile), one made for this run (--tls, in a
    directory removed at exit), or None for plain HTTP."""
    if args.keyfile is not None and args.certfile is None:
        raise CertificateError("--keyfile is the key of --certfile: give --certfile too")
    if args.certfile is not None:
        return CertificateFiles(certfile=args.certfile, keyfile=args.keyfile)
    if not args.tls:
        return None
    directory = cleanup.enter_context(tempfile.TemporaryDirectory(prefix="llmstreams-mock-tls-"))
    return make_certificate(Path(directory), args.host)


def _trust_notice(certificate: CertificateFiles | None) -> str | None:
    """The line after the ready line that names the CA made for this run."""
    if certificate is None or certificate.ca_file is None:
        return None
    return (
        f"llmstreams mock: its certificate is signed by a CA made for this run; trust it with "
        f"SSL_CERT_FILE={certificate.ca_file}"
    )


def _shared_stats(args: argparse.Namespace) -> SharedCounters | None:
    """The counters sibling workers share, set up by the process that started them."""
    if args.stats_file is None:
        return None
    return SharedCounters(args.stats_file, args.stats_rows, args.stats_row)


def _shared_token_key() -> bytes | None:
    """The token key sibling workers share, set by the process that started them."""
    key = os.environ.get(TOKEN_KEY_ENV)
    return bytes.fromhex(key) if key else None


def _knob_texts(args: argparse.Namespace) -> list[tuple[str, str]]:
    texts: list[tuple[str, str]] = []
    for name in KNOB_NAMES:
        value = getattr(args, name)
        if value is True:
            texts.append((name, "true"))
        elif isinstance(value, str):
            texts.append((name, value))
    return texts


def _read_credentials(path: Path | None) -> MockCredentials | None:
    if path is None:
        return None
    fields = json.loads(path.read_text())
    if not isinstance(fields, dict):
        raise ValueError(f"{path}: expected a JSON object of credentials")
    return MockCredentials(**fields)


def _stop_on_signals() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signal_number in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signal_number, stop.set)
    return stop


def _stop_when_parent_ends(descriptor: int, stop: asyncio.Event) -> None:
    """Set `stop` once the pipe from the parent that started this worker reads end-of-file."""
    os.set_blocking(descriptor, False)

    def on_readable() -> None:
        try:
            if os.read(descriptor, 4096):
                return
        except BlockingIOError:
            return
        except OSError:
            pass
        asyncio.get_running_loop().remove_reader(descriptor)
        stop.set()

    asyncio.get_running_loop().add_reader(descriptor, on_readable)


def _announce(url: str, workers: int, notice: str | None) -> None:
    print(ready_line(url, workers), flush=True)
    if notice is not None:
        print(notice, flush=True)


async def _serve(server: MockServer, parent_fd: int | None, notice: str | None) -> int:
    stop = _stop_on_signals()
    if parent_fd is not None:
        _stop_when_parent_ends(parent_fd, stop)
    async with server:
        _announce(server.url, 1, notice)
        await stop.wait()
    return 0


async def _supervise(workers: MockWorkers, count: int, notice: str | None) -> int:
    stop = _stop_on_signals()
    async with workers as url:
        _announce(url, count, notice)
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), _WORKER_CHECK_INTERVAL)
            except TimeoutError:
                if workers.exited():
                    print("llmstreams mock: a worker exited; stopping", file=sys.stderr)
                    return 1
    return 0
