"""`llmstreams batch --ray` on a real Ray cluster of two nodes: two `ray start` processes on
this machine, with token authentication, each node's workers with their own environment, and
the batch run as its own process (the driver), as a user runs it."""

from __future__ import annotations

import json
import os
import secrets
import selectors
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import attrs
import pytest

from llmstreams.cli import main
from llmstreams.mock.workers import spawn_mock_workers

REPO = Path(__file__).resolve().parents[1]
RAY = Path(sys.executable).with_name("ray")
MODEL = "qwen-turbo"
# Each node's workers find the vendor in their own environment (DASHSCOPE_BASE_URL): a mock
# that answers with texts of its own length, so each result tells which node streamed it.
HEAD_ANSWER_CHARS = 120
WORKER_ANSWER_CHARS = 60
STARTED = "Ray runtime started."
NODE_START_TIMEOUT = 120.0
RUN_TIMEOUT = 120.0
# Two Ray nodes start in the first test's setup: about 25 s on an idle 2-core machine, over a
# minute on a loaded one. Then each batch starts a driver and its actors.
CLUSTER_TEST_TIMEOUT = 300


@attrs.frozen
class Cluster:
    address: str
    """The head's GCS address, HOST:PORT."""
    temp_dir: Path
    """RAY_TMPDIR of both nodes: `--ray=auto` finds the cluster in its ray_current_cluster."""
    token: str


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _without_ray_and_vendor_settings(environment: Mapping[str, str]) -> dict[str, str]:
    return {
        name: value for name, value in environment.items()
        if not name.startswith(("RAY_", "DASHSCOPE_"))
    }


def _start_node(arguments: list[str], environment: dict[str, str]) -> subprocess.Popen[bytes]:
    # --block: the node lives as long as this process, and stops with it (SIGTERM), so the test
    # stops exactly the Ray processes it started (`ray stop` would stop every Ray of the machine).
    return subprocess.Popen(
        [str(RAY), "start", "--block", "--node-ip-address=127.0.0.1", "--num-cpus=1",
         "--disable-usage-stats", *arguments],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=environment,
    )


def _wait_until_started(node: subprocess.Popen[bytes], deadline: float) -> None:
    """Read the node's output until it says it started (it prints nothing to await on before)."""
    assert node.stdout is not None
    descriptor = node.stdout.fileno()
    output = b""
    with selectors.DefaultSelector() as selector:
        selector.register(descriptor, selectors.EVENT_READ)
        while STARTED.encode() not in output:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not selector.select(remaining):
                raise TimeoutError(f"the Ray node did not start in time:\n{output.decode()}")
            data = os.read(descriptor, 65536)
            if not data:
                raise RuntimeError(f"the Ray node exited ({node.wait()}):\n{output.decode()}")
            output += data


def _stop_node(node: subprocess.Popen[bytes]) -> None:
    node.terminate()
    try:
        node.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        node.kill()
        node.communicate()


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    token = secrets.token_hex(32)
    # Short: Ray's Unix sockets live under it, and their paths may not exceed 107 bytes.
    temp_dir = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))
    nodes: list[subprocess.Popen[bytes]] = []
    try:
        with (
            spawn_mock_workers(1, answer_chars=HEAD_ANSWER_CHARS) as head_vendor,
            spawn_mock_workers(1, answer_chars=WORKER_ANSWER_CHARS) as worker_vendor,
        ):
            environment = {
                **_without_ray_and_vendor_settings(os.environ),
                "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1", "RAY_TMPDIR": str(temp_dir),
                # What a Ray 2.60 cluster with token authentication needs on every node.
                "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token,
                "DASHSCOPE_API_KEY": "sk-node-key",
                # A stopped node drains for up to 30 s first (for Ray Serve): nothing to drain.
                "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0",
            }
            port = _free_port()
            deadline = time.monotonic() + NODE_START_TIMEOUT
            nodes.append(_start_node(
                ["--head", f"--port={port}", "--include-dashboard=false"],
                {**environment, "DASHSCOPE_BASE_URL": head_vendor},
            ))
            _wait_until_started(nodes[0], deadline)
            nodes.append(_start_node(
                [f"--address=127.0.0.1:{port}"],
                {**environment, "DASHSCOPE_BASE_URL": worker_vendor},
            ))
            _wait_until_started(nodes[1], time.monotonic() + NODE_START_TIMEOUT)
            yield Cluster(f"127.0.0.1:{port}", temp_dir, token)
    finally:
        for node in reversed(nodes):
            _stop_node(node)
        shutil.rmtree(temp_dir, ignore_errors=True)


def run_batch(tmp_path: Path, ray_option: str, environment: Mapping[str, str]) -> tuple[
    subprocess.CompletedProcess[str], dict[Any, dict[str, Any]]
]:
    """`llmstreams batch` in a process of its own, with no credentials nor vendor URL of its own:
    the nodes' workers have theirs."""
    source = tmp_path / "input.jsonl"
    source.write_text("".join(json.dumps({"id": i, "prompt": f"q{i}"}) + "\n" for i in range(40)))
    output = tmp_path / "output.jsonl"
    driver_environment = {
        **_without_ray_and_vendor_settings(os.environ), "PYTHONPATH": str(REPO),
        # Ray Data starts its actors one by one and hands out work as soon as the first is up:
        # wait for both, so that both nodes' actors have rows to stream.
        "RAY_DATA_DEFAULT_WAIT_FOR_MIN_ACTORS_S": "60",
        **environment,
    }
    finished = subprocess.run(
        [sys.executable, "-m", "llmstreams", "batch", str(source), "-o", str(output),
         "--provider", "dashscope", "--model", MODEL, "--actors", "2", "--concurrency", "4",
         ray_option],
        env=driver_environment, cwd=tmp_path, capture_output=True, text=True, timeout=RUN_TIMEOUT,
    )
    results: dict[Any, dict[str, Any]] = {}
    if output.exists():
        for line in output.read_text().splitlines():
            record = json.loads(line)
            assert record["id"] not in results, f"id {record['id']} written twice"
            results[record["id"]] = record
    return finished, results


def assert_streamed_on_both_nodes(
    finished: subprocess.CompletedProcess[str], results: dict[Any, dict[str, Any]]
) -> None:
    assert finished.returncode == 0, finished.stderr
    assert set(results) == set(range(40))
    assert all("error" not in record for record in results.values())
    lengths = {len(record["text"]) for record in results.values()}
    assert lengths == {HEAD_ANSWER_CHARS, WORKER_ANSWER_CHARS}, "actors ran on one node only"


@pytest.mark.timeout(CLUSTER_TEST_TIMEOUT)
def test_batch_runs_on_both_nodes_of_a_cluster_given_by_its_address(
    cluster: Cluster, tmp_path: Path
) -> None:
    finished, results = run_batch(
        tmp_path, f"--ray={cluster.address}",
        {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": cluster.token},
    )
    assert_streamed_on_both_nodes(finished, results)


@pytest.mark.timeout(CLUSTER_TEST_TIMEOUT)
def test_batch_on_a_node_of_the_cluster_finds_it_with_auto(cluster: Cluster, tmp_path: Path) -> None:
    # As on a node where `ray start` ran: the cluster's address in RAY_TMPDIR/ray, and its token
    # in a file. A cluster found by `auto` needs no RAY_AUTH_MODE: a token turns it on.
    token_file = tmp_path / "auth_token"
    token_file.write_text(cluster.token)
    finished, results = run_batch(
        tmp_path, "--ray=auto",
        {"RAY_TMPDIR": str(cluster.temp_dir), "RAY_AUTH_TOKEN_PATH": str(token_file)},
    )
    assert_streamed_on_both_nodes(finished, results)


@pytest.mark.timeout(CLUSTER_TEST_TIMEOUT)
@pytest.mark.parametrize("by_ray_address", [False, True], ids=["--ray=HOST:PORT", "RAY_ADDRESS"])
def test_an_address_without_the_token_says_what_the_cluster_needs(
    by_ray_address: bool, cluster: Cluster, tmp_path: Path
) -> None:
    # Ray tries 20 times, a second apart, before it gives up: once is enough here.
    environment = {"RAY_NUM_REDIS_GET_RETRIES": "1"}
    if by_ray_address:  # as a `ray job submit` driver is told
        environment["RAY_ADDRESS"] = cluster.address
    option = "--ray=auto" if by_ray_address else f"--ray={cluster.address}"
    finished, results = run_batch(tmp_path, option, environment)
    assert finished.returncode == 2, finished.stderr
    last_line = finished.stderr.rstrip("\n").splitlines()[-1]
    assert last_line.startswith(
        f"llmstreams batch: error: the Ray cluster at {cluster.address} wants its token: "
    )
    assert "RAY_AUTH_MODE=token" in last_line and "RAY_AUTH_TOKEN" in last_line
    assert cluster.token not in finished.stderr
    assert results == {}


@pytest.mark.parametrize(
    ("option", "ray_address"),
    [("--ray=ray://127.0.0.1:10001", None), ("--ray=auto", "ray://127.0.0.1:10001")],
)
def test_a_ray_client_address_is_refused_naming_the_ways_that_work(
    option: str, ray_address: str | None, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("DASHSCOPE_API_KEY", "sk-test-key")
    if ray_address is None:
        monkeypatch.delenv("RAY_ADDRESS", raising=False)
    else:
        monkeypatch.setenv("RAY_ADDRESS", ray_address)
    source = tmp_path / "input.jsonl"
    source.write_text('{"id": 1, "prompt": "q"}\n')
    output = tmp_path / "output.jsonl"
    code = main(["batch", str(source), "-o", str(output), "--provider", "dashscope", option])
    assert code == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1, error
    shown = option if ray_address is None else f"RAY_ADDRESS={ray_address}"
    assert error.startswith(f"llmstreams batch: error: {shown}: Ray Data does not run through Ray Client")
    assert "--ray=auto" in error and "ray job submit -- llmstreams batch" in error
    assert not output.exists()
