"""llmstreams on Ray Data: `Generate` through `map_batches`, and `llmstreams batch --ray`, on a
local Ray (2 CPUs, no dashboard) against mock server processes on loopback."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow
import pyarrow.parquet
import pytest
import ray
import ray.cloudpickle
import ray.data

from llmstreams import InvalidParameterError, RateLimit, ServerError
from llmstreams.batch import FAIL_FAST_AFTER
from llmstreams.cli import main
from llmstreams.mock import BEHAVIOUR_HEADER
from llmstreams.mock.credentials import MockCredentials
from llmstreams.mock.workers import spawn_mock_workers
from llmstreams.outputlock import OutputLock
from llmstreams.ray import RESULT_COLUMNS, ClusterRateLimiter, Generate, Secrets, shared_out
from llmstreams.ray.batch import interrupt_requests
from tests.support import ROOT, python_examples, run_example

REPO = Path(__file__).resolve().parents[1]
MODEL = "billa-7b-sft-v1"
SECRET = "sk-ray-test-secret-4f2a"
BREAK_AFTER_2 = {BEHAVIOUR_HEADER: "disconnect_after=2"}

# The killed-actor test ships a subclass defined here to the actors.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


@pytest.fixture(scope="session")
def local_ray() -> Iterator[None]:
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def mock_url() -> Iterator[str]:
    with spawn_mock_workers(1) as url:
        yield url


def generate(
    url: str, dataset: Any, *, actors: int = 2, batch_size: int = 32,
    cls: type[Generate] = Generate, **kwargs: Any,
) -> list[dict[str, Any]]:
    options: dict[str, Any] = {
        "model": MODEL, "base_url": url, "concurrency": 8, "credentials": {"api_key": "sk-test-key"},
        **kwargs,
    }
    results = dataset.map_batches(
        cls,
        fn_constructor_args=("dashscope",),
        fn_constructor_kwargs=options,
        batch_size=batch_size,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=actors, max_concurrent_calls_per_actor=2),
    )
    rows: list[dict[str, Any]] = results.take_all()
    return rows


def by_id(rows: list[dict[str, Any]]) -> dict[Any, dict[str, Any]]:
    found: dict[Any, dict[str, Any]] = {}
    for row in rows:
        assert row["id"] not in found, f"id {row['id']!r} appears twice"
        found[row["id"]] = row
    return found


def test_map_batches_streams_every_row_and_turns_failures_into_rows(local_ray: None, mock_url: str) -> None:
    rows: list[dict[str, Any]] = [{"id": f"r{i}", "prompt": f"question {i}"} for i in range(300)]
    rows += [
        {"id": "chat", "messages": [{"role": "user", "content": "hi"}]},
        {"id": "whole", "prompt": "q"},
        {"id": "broken", "prompt": "q", "extra_headers": BREAK_AFTER_2},
        {"id": "hot", "prompt": "q", "temperature": 7.0},
        {"id": "both", "prompt": "q", "messages": [{"role": "user", "content": "hi"}]},
        {"id": None, "prompt": "no id"},
    ]
    results = generate(mock_url, ray.data.from_items(rows))

    assert len(results) == len(rows)
    assert all(list(row) == list(RESULT_COLUMNS) for row in results)
    found = by_id(results)
    for i in range(300):
        row = found[f"r{i}"]
        assert row["error_type"] is None and row["text"] and row["finish_reason"] == "stop"
        assert row["usage"]["total_tokens"] > 0 and row["attempts"] == 1 and row["request_id"]
    assert found["chat"]["text"] and found["chat"]["error_type"] is None
    broken = found["broken"]
    assert broken["error_type"] == "StreamInterruptedError" and broken["text"] is None
    assert broken["partial_text"] and found["whole"]["text"].startswith(broken["partial_text"])
    assert found["hot"]["error_type"] == "InvalidParameterError"
    assert found["hot"]["error_field"] == "temperature"
    assert found["both"]["error_type"] == "InputError"
    assert "prompt" in found["both"]["error_message"]
    assert found[None]["error_type"] == "InputError" and "id" in found[None]["error_message"]


def test_fail_fast_fails_the_job_with_the_request_error(local_ray: None, mock_url: str) -> None:
    rows = [{"id": i, "prompt": "q"} for i in range(20)] + [
        {"id": 99, "prompt": "q", "extra_headers": {BEHAVIOUR_HEADER: "fail_code=InternalError"}}
    ]
    with pytest.raises(Exception) as raised:
        generate(mock_url, ray.data.from_items(rows), actors=1, fail_fast=True, max_retries=0)
    causes = []
    cause: BaseException | None = raised.value
    while cause is not None:
        causes.append(cause)
        cause = cause.__cause__
    shown = "".join(traceback.format_exception(raised.value))
    assert any(isinstance(cause, ServerError) for cause in causes) or "ServerError" in shown
    assert "raised for the request with id 99 (fail_fast=True)" in shown


class DiesOnce(Generate):
    """Kills its own actor process on the first batch holding the id "die"."""

    def __init__(self, *args: Any, marker: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.marker = Path(marker)

    async def __call__(self, batch: pyarrow.Table) -> Any:
        if "die" in batch.column("id").to_pylist() and not self.marker.exists():
            self.marker.touch()
            os._exit(1)
        return await super().__call__(batch)


def test_a_killed_actor_loses_no_row_and_repeats_none(local_ray: None, mock_url: str, tmp_path: Path) -> None:
    ids = [f"r{i}" for i in range(150)] + ["die"] + [f"s{i}" for i in range(150)]
    dataset = ray.data.from_items([{"id": name, "prompt": name} for name in ids])
    marker = tmp_path / "died"
    results = generate(mock_url, dataset, cls=DiesOnce, marker=str(marker), batch_size=16)
    assert marker.exists(), "the actor never died"
    found = by_id(results)
    assert set(found) == set(ids)
    assert all(row["error_type"] is None and row["text"] for row in found.values())


def test_one_rate_limit_across_actors_and_no_secret_in_ray(local_ray: None, mock_url: str) -> None:
    limiter = ClusterRateLimiter(RateLimit(requests_per_second=1000, tokens_per_minute=10**9))
    credentials = Secrets({"api_key": SECRET})
    worker = Generate("dashscope", model=MODEL, credentials=credentials, rate_limiter=limiter)
    for shown in (repr(worker), repr(credentials), repr(limiter), str(credentials)):
        assert SECRET not in shown
    rows = [{"id": i, "prompt": f"q{i}"} for i in range(60)]
    results = generate(
        mock_url, ray.data.from_items(rows), credentials=credentials, rate_limiter=limiter
    )
    assert all(row["error_type"] is None for row in results)
    granted, tokens = limiter.granted()
    assert granted == 60, "every request of both actors took a permit from the one limiter"
    assert tokens == sum(row["usage"]["total_tokens"] for row in results)
    logs = Path(ray._private.worker._global_node.get_session_dir_path()) / "logs"
    leaked = [path for path in logs.rglob("*") if path.is_file() and SECRET.encode() in path.read_bytes()]
    assert not leaked


def write_jsonl(path: Path, lines: list[Any]) -> Path:
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


def read_jsonl(path: Path) -> dict[Any, dict[str, Any]]:
    return by_id([json.loads(line) for line in path.read_bytes().splitlines()])


def batch_args(source: Path, output: Path, url: str, *extra: str) -> list[str]:
    return [
        "batch", str(source), "-o", str(output), "--provider", "dashscope", "--model", MODEL,
        "--base-url", url, "--concurrency", "8", *extra,
    ]


def test_batch_on_ray_resumes_and_reports_like_a_local_batch(
    local_ray: None, mock_url: str, tmp_path: Path,
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DASHSCOPE_API_KEY", "sk-test-key")
    lines: list[Any] = [{"id": i, "prompt": f"question {i}"} for i in range(200)]
    lines += [
        {"id": "s7", "prompt": "a string id"},
        {"id": "hot", "prompt": "q", "temperature": 7},
        {"prompt": "no id"},
        "not json",
        {"id": 3, "prompt": "a duplicate id"},
    ]
    source = write_jsonl(tmp_path / "input.jsonl", lines)
    output = tmp_path / "output.jsonl"
    # An earlier run left 50 results and a partial line.
    write_jsonl(output, [{"id": i, "text": "earlier", "attempts": 1} for i in range(50)])
    with output.open("ab") as raw:
        raw.write(b'{"id": 60, "te')

    assert main([*batch_args(source, output, mock_url), "--ray"]) == 1
    captured = capsys.readouterr()
    results = read_jsonl(output)
    assert set(results) == set(range(200)) | {"s7", "hot"}
    assert all(results[i]["text"] == "earlier" for i in range(50))
    assert all(results[i]["text"] and results[i]["chunks"] > 0 for i in range(50, 200))
    assert results["hot"]["error"]["field"] == "temperature"
    assert "input lines          205 (2 malformed, 1 duplicate id)" in captured.out
    assert "already done         50" in captured.out
    assert "run now              152: 151 succeeded, 1 failed (InvalidParameterError 1)" in captured.out
    assert f"moved what an interrupted run left half-written (14 bytes) to {output}.partial" in captured.err
    assert "input.jsonl:204: not valid JSON" in captured.err
    assert "batch: 152/152 (100%) | 1 failed" in captured.err

    assert main([*batch_args(source, output, mock_url), "--ray", "--retry-errors"]) == 1
    assert "run now              1: 0 succeeded, 1 failed" in capsys.readouterr().out
    assert len(read_jsonl(output)) == 202


def test_batch_on_ray_reads_and_writes_parquet(
    local_ray: None, mock_url: str, tmp_path: Path,
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DASHSCOPE_API_KEY", "sk-test-key")
    source = tmp_path / "input.parquet"
    prompts = [f"question {i}" for i in range(120)]
    table = pyarrow.table({
        "id": [*range(120), None],
        "prompt": [*prompts, "no id"],
        "temperature": [0.5] * 60 + [None] * 60 + [None],
        "extra_headers": [None] * 119 + [BREAK_AFTER_2, None],
    })
    pyarrow.parquet.write_table(table, source)
    output = tmp_path / "output.parquet"

    # Each of the 2 actors holds half of --rps.
    assert main([*batch_args(source, output, mock_url), "--ray", "--rps", "1000"]) == 1
    written = pyarrow.parquet.read_table(output).to_pylist()
    found = by_id(written)
    assert set(found) == set(range(120))
    assert [name for name in written[0]] == list(RESULT_COLUMNS)
    assert all(found[i]["error_type"] is None and found[i]["text"] for i in range(119))
    assert found[119]["error_type"] == "StreamInterruptedError" and found[119]["partial_text"]
    assert "input.parquet:121: has no \"id\"" in capsys.readouterr().err

    assert main([*batch_args(source, output, mock_url), "--ray", "--retry-errors"]) == 1
    again = by_id(pyarrow.parquet.read_table(output).to_pylist())
    assert set(again) == set(range(120)) and again[0] == found[0]


def test_a_doomed_ray_batch_stops_early_and_runs_again_once_fixed(
    local_ray: None, tmp_path: Path,
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    count = 200
    source = write_jsonl(tmp_path / "input.jsonl", [{"id": i, "prompt": f"q{i}"} for i in range(count)])
    output = tmp_path / "output.jsonl"
    with spawn_mock_workers(1, credentials=MockCredentials(dashscope_api_key="sk-the-right-key")) as url:
        monkeypatch.setenv("DASHSCOPE_API_KEY", "sk-a-wrong-key")
        assert main([*batch_args(source, output, url, "--concurrency", "2"), "--ray"]) == 3
        assert "AuthenticationError (code InvalidApiKey)" in capsys.readouterr().out
        failed = read_jsonl(output)
        assert FAIL_FAST_AFTER <= len(failed) < count
        assert {result["error"]["type"] for result in failed.values()} == {"AuthenticationError"}

        monkeypatch.setenv("DASHSCOPE_API_KEY", "sk-the-right-key")
        assert main([*batch_args(source, output, url), "--ray"]) == 0
    assert "running again the" in capsys.readouterr().err
    results = read_jsonl(output)
    assert set(results) == set(range(count)) and all("error" not in r for r in results.values())


# The finalizer's dropped KeyboardInterrupt is the case under test, not a fault of the test.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
# Ignored: as in a command a script started in the background (the shell ignores SIGINT there).
@pytest.mark.parametrize("before", [signal.default_int_handler, signal.SIG_IGN])
def test_a_ctrl_c_during_a_ray_batch_is_kept_even_when_a_finalizer_drops_it(before: Any) -> None:
    class RayLikeObject:
        def __del__(self) -> None:
            # Delivered to this thread at once: the KeyboardInterrupt is raised inside the
            # finalizer, which Python prints and drops.
            signal.raise_signal(signal.SIGINT)

    outside = signal.signal(signal.SIGINT, before)
    try:
        with interrupt_requests() as interrupted:
            assert not interrupted.is_set()
            RayLikeObject()
            assert interrupted.is_set()
            with pytest.raises(KeyboardInterrupt):
                signal.raise_signal(signal.SIGINT)
        assert signal.getsignal(signal.SIGINT) is before
    finally:
        signal.signal(signal.SIGINT, outside)


async def test_an_interrupted_or_killed_ray_batch_resumes_with_every_id_exactly_once(local_ray: None, tmp_path: Path) -> None:
    count = 200
    source = write_jsonl(tmp_path / "input.jsonl", [{"id": f"r{i}", "prompt": f"q{i}"} for i in range(count)])
    output = tmp_path / "output.jsonl"
    env = {**os.environ, "DASHSCOPE_API_KEY": "sk-test-key", "PYTHONPATH": str(REPO)}

    async def start(url: str) -> asyncio.subprocess.Process:
        # --ray=ADDRESS: the local Ray this test session started.
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", "llmstreams", *batch_args(source, output, url, "--concurrency", "4"),
            f"--ray={ray.get_runtime_context().gcs_address}", env=env, cwd=REPO,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )

    async def wait_for_lines(process: asyncio.subprocess.Process, lines: int) -> None:
        """Poll the output of the batch (another process: nothing to await)."""
        async with asyncio.timeout(90):
            while not output.exists() or len(output.read_bytes().splitlines()) < lines:
                assert process.returncode is None, (await process.communicate())[1].decode()
                await asyncio.sleep(0.1)

    # 10 chunks at 20 per second: half a second per request, 8 in flight: about 12 s in all.
    async with spawn_mock_workers(1, chunks_per_second=20) as url:
        process = await start(url)
        await wait_for_lines(process, 8)
        process.send_signal(signal.SIGINT)
        stdout, _ = await asyncio.wait_for(process.communicate(), timeout=60)
        assert process.returncode == 130
        interrupted = len(read_jsonl(output))
        assert f"interrupted: {count - interrupted} requests not run" in stdout.decode()

        process = await start(url)
        try:
            await wait_for_lines(process, interrupted + 8)
        finally:
            process.send_signal(signal.SIGKILL)
            await process.communicate()
    written = len(read_jsonl(output))
    assert interrupted + 8 <= written < count

    async with spawn_mock_workers(1) as url:
        process = await start(url)
        stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=120)
    assert process.returncode == 0, stderr.decode()
    results = read_jsonl(output)
    assert set(results) == {f"r{i}" for i in range(count)}
    assert all("error" not in result for result in results.values())
    assert f"already done         {written}" in stdout.decode()


def test_ray_missing_says_how_to_install(tmp_path: Path) -> None:
    source = write_jsonl(tmp_path / "input.jsonl", [{"id": 1, "prompt": "x"}])
    code = (
        "import sys; sys.modules['ray'] = None\n"
        "from llmstreams.cli import main\n"
        f"sys.exit(main({batch_args(source, tmp_path / 'out.jsonl', 'http://127.0.0.1:9', '--ray')!r}))"
    )
    import subprocess

    finished = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert finished.returncode == 2
    assert "pip install 'llmstreams[ray]'" in finished.stderr
    assert not (tmp_path / "out.jsonl").exists()


def test_batch_on_a_local_ray_without_credentials_is_a_usage_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("DASHSCOPE_API_KEY", raising=False)
    source = write_jsonl(tmp_path / "input.jsonl", [{"id": 1, "prompt": "x"}])
    output = tmp_path / "out.jsonl"
    assert main([*batch_args(source, output, "http://127.0.0.1:9"), "--ray"]) == 2
    assert "DASHSCOPE_API_KEY" in capsys.readouterr().err
    assert not output.exists()


def test_parquet_output_of_mixed_ids_is_a_usage_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DASHSCOPE_API_KEY", "sk-test-key")
    source = write_jsonl(tmp_path / "input.jsonl", [{"id": 1, "prompt": "x"}, {"id": "a", "prompt": "y"}])
    output = tmp_path / "out.parquet"
    assert main([*batch_args(source, output, "http://127.0.0.1:9"), "--ray"]) == 2
    assert "Parquet output needs ids of one type" in capsys.readouterr().err
    assert not list(output.glob("*.parquet"))


def test_generate_rejects_bad_settings_before_any_ray_work() -> None:
    with pytest.raises(InvalidParameterError, match="model"):
        Generate("openai")  # no default model: the server's own must be named
    with pytest.raises(InvalidParameterError, match="provider"):
        Generate("nowhere", model=MODEL)  # type: ignore[arg-type]
    with pytest.raises(InvalidParameterError, match="concurrency"):
        Generate("dashscope", model=MODEL, concurrency=0)


async def test_the_docs_example_runs(mock_url: str) -> None:
    examples = python_examples(ROOT / "docs" / "ray.md")
    assert len(examples) == 1
    # The example's ray.init() starts a Ray of its own, whose workers inherit this environment
    # (the credentials and the mock's URL), as they would a user's.
    environment = {**os.environ, "DASHSCOPE_API_KEY": "sk-any-key", "DASHSCOPE_BASE_URL": mock_url}
    environment.pop("RAY_ADDRESS", None)
    output = await run_example(examples[0], environment)
    counts, text = output.rstrip("\n").split("\n")[-2:]
    assert counts == "101 answers, 0 failed"
    assert len(text) == 30


def test_a_limit_shared_out_adds_up_to_the_whole() -> None:
    limit = RateLimit(requests_per_second=50, tokens_per_minute=90_000)
    assert shared_out(limit, 4) == RateLimit(requests_per_second=12.5, tokens_per_minute=22_500)
    # Less than one request per second each: one permit actor must hold it instead.
    assert shared_out(RateLimit(requests_per_second=3), 4) is None
    assert shared_out(RateLimit(tokens_per_minute=100), 400) == RateLimit(tokens_per_minute=0.25)


def test_a_second_batch_on_the_same_output_refuses_at_once_on_ray_too(
    mock_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DASHSCOPE_API_KEY", "sk-test-key")
    source = write_jsonl(tmp_path / "input.jsonl", [{"id": 1, "prompt": "q"}])
    output = tmp_path / "output.jsonl"
    holder = OutputLock(output)
    holder.acquire()
    try:
        assert main([*batch_args(source, output, mock_url), "--ray"]) == 5
    finally:
        holder.release()
    assert "output.jsonl" in capsys.readouterr().err
    assert not output.exists()
