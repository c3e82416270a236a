"""The command line on every provider of the registry: `batch` and `bench` against the mock
(`--mock`) or a server given by URL with credentials from the environment."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from llmstreams import PROVIDERS
from llmstreams.cli import main
from llmstreams.mock import MockCredentials, spawn_mock_workers

SMALL_ANSWER = ("--answer-chars", "48", "--chunk-chars", "12")
ENVIRONMENT = (
    "OPENAI_API_KEY", "OPENAI_BASE_URL", "QIANFAN_API_KEY", "QIANFAN_SECRET_KEY", "QIANFAN_AK",
    "QIANFAN_SK", "QIANFAN_ACCESS_TOKEN", "QIANFAN_ACCESS_KEY", "QIANFAN_SECRET_ACCESS_KEY",
    "QIANFAN_BASE_URL", "DASHSCOPE_API_KEY", "DASHSCOPE_BASE_URL",
)


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ENVIRONMENT:
        monkeypatch.delenv(name, raising=False)


def write_input(path: Path) -> Path:
    lines = [
        {"id": "chat", "messages": [{"role": "user", "content": "hello"}], "temperature": 0.5},
        {"id": "prompt", "prompt": "def fib(n):"},
    ]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    return path


def results(path: Path) -> dict[str, dict[str, Any]]:
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    return {row["id"]: row for row in rows}


@pytest.mark.parametrize("provider", list(PROVIDERS))
def test_batch_runs_on_every_provider_against_the_mock(
    provider: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source, output = write_input(tmp_path / "in.jsonl"), tmp_path / "out.jsonl"
    code = main(["batch", str(source), "-o", str(output), "--provider", provider, "--mock"])
    assert code == 0, capsys.readouterr().err
    rows = results(output)
    assert set(rows) == {"chat", "prompt"}
    for row in rows.values():
        assert len(row["text"]) == 240 and row["usage"]["total_tokens"] > 0


@pytest.mark.parametrize(
    ("provider", "path", "environment"),
    [
        ("openai", "/v1", {"OPENAI_API_KEY": "sk-batch-key"}),
        ("qianfan", "", {"QIANFAN_API_KEY": "bce-v3/ALTAK-batch/key"}),
        ("dashscope-compatible", "", {"DASHSCOPE_API_KEY": "sk-ds"}),
        ("deepseek", "/deepseek", {"DEEPSEEK_API_KEY": "sk-deepseek-key"}),
    ],
)
def test_batch_takes_a_servers_url_and_credentials_from_the_environment(
    provider: str, path: str, environment: dict[str, str], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    source, output = write_input(tmp_path / "in.jsonl"), tmp_path / "out.jsonl"
    # A model the vendor serves (the generic /v1 route serves any).
    model = PROVIDERS[provider].default_model or "some-model"
    with spawn_mock_workers(1) as url:
        code = main(["batch", str(source), "-o", str(output), "--provider", provider,
                     "--base-url", url + path, "--model", model])
    assert code == 0, capsys.readouterr().err
    assert {row["id"] for row in results(output).values() if row.get("text")} == {"chat", "prompt"}
    for value in environment.values():
        assert value not in capsys.readouterr().out


@pytest.mark.parametrize(
    ("arguments", "complaint"),
    [
        (["--provider", "deepseek", "--endpoint", "my_service"], "--endpoint is for Qianfan v1"),
        (["--provider", "openai", "--mock", "--base-url", "http://127.0.0.1:9/v1"], "not both"),
        (["--provider", "openai"], "--provider openai needs --model"),
        (["--provider", "qianfan-v2"], "invalid choice"),
    ],
)
def test_batch_refuses_options_that_do_not_fit_the_provider(
    arguments: list[str], complaint: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = write_input(tmp_path / "in.jsonl")
    try:
        code = main(["batch", str(source), "-o", str(tmp_path / "out.jsonl"), *arguments])
    except SystemExit as exit_:
        code = int(exit_.code or 0)
    assert code == 2 and complaint in capsys.readouterr().err
    assert not (tmp_path / "out.jsonl").exists()


@pytest.mark.parametrize("provider", list(PROVIDERS))
def test_bench_against_the_mock_on_every_provider(provider: str, tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    assert main([
        "bench", "--mock", "--mock-workers", "0", "--concurrency", "2", "--requests", "6",
        "--warmup", "0", *SMALL_ANSWER, "--provider", provider, "--json", str(report), "--quiet",
    ]) == 0
    document = json.loads(report.read_text(encoding="utf-8"))
    run = document["runs"][0]
    assert run["completed"] == 6 and run["failed"] == 0
    # Four pieces of 12 characters; the closing chunk (finish reason and usage) is not timed.
    assert run["total_chunks"] == 6 * 4
    assert run["provider"] == provider and run["model"] == PROVIDERS[provider].model_for(mock=True)


def test_bench_signs_qianfan_v1_requests_when_asked(tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    assert main([
        "bench", "--mock-workers", "0", "--concurrency", "2", "--requests", "4", *SMALL_ANSWER,
        "--provider", "qianfan-v1", "--mock-auth", "access_key", "--json", str(report), "--quiet",
    ]) == 0
    run = json.loads(report.read_text(encoding="utf-8"))["runs"][0]
    assert run["completed"] == 4 and run["mock_auth"] == "access_key"


def test_bench_targets_any_openai_compatible_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    api_key = "sk-bench-secret-4321"
    monkeypatch.setenv("OPENAI_API_KEY", api_key)
    report = tmp_path / "report.json"
    with spawn_mock_workers(1, credentials=MockCredentials(openai_api_key=api_key)) as url:
        code = main([
            "bench", "--provider", "openai", "--base-url", url + "/v1", "--model", "served-model",
            "--concurrency", "2", "--requests", "4", "--warmup", "1", "--json", str(report),
        ])
    assert code == 0
    run = json.loads(report.read_text(encoding="utf-8"))["runs"][0]
    assert run["completed"] == 4 and run["model"] == "served-model"
    captured = capsys.readouterr()
    for text in (captured.out, captured.err, report.read_text(encoding="utf-8")):
        assert api_key not in text


@pytest.mark.parametrize(
    ("arguments", "complaint"),
    [
        (["--provider", "openai", "--base-url", "http://127.0.0.1:9/v1"], "--model"),
        (["--provider", "deepseek", "--mock-auth", "access_key"], "deepseek authenticates with api_key"),
        (["--mock", "--base-url", "http://127.0.0.1:9"], "not both"),
    ],
)
def test_bench_refuses_incomplete_dialect_settings(
    arguments: list[str], complaint: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["bench", *arguments]) == 2
    assert complaint in capsys.readouterr().err
