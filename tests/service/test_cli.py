"""The ``cnn-service`` command: flags, environment defaults, how uvicorn is started."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest

from service import cli
from service.settings import Settings

README = Path(__file__).resolve().parents[2] / "README.md"


@pytest.fixture
def uvicorn_run(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Replace ``uvicorn.run``; record its arguments and the metrics directory it saw."""
    import uvicorn

    calls: list[dict[str, Any]] = []

    def fake_run(app: str, **kwargs: Any) -> None:
        metrics_dir = os.environ.get(cli.MULTIPROC_ENV)
        calls.append({"app": app, "metrics_dir": metrics_dir, **kwargs})
        assert metrics_dir is None or Path(metrics_dir).is_dir()

    monkeypatch.setattr(uvicorn, "run", fake_run)
    monkeypatch.delenv(cli.MULTIPROC_ENV, raising=False)
    # The CLI hands these to its workers through the environment: restored after each test.
    names = ("HOST", "PORT", "WORKERS", "LOG_LEVEL", "GRPC_PORT", "ENABLE_GRPC")
    for name in (*names, "MODEL_CONTROL_MODE", "MODEL_REPOSITORY"):
        monkeypatch.delenv(f"CNN_{name}", raising=False)
    return calls


def test_defaults(uvicorn_run: list[dict[str, Any]]) -> None:
    assert cli.main([]) == 0
    (call,) = uvicorn_run
    assert call["app"] == "service.app:create_app"
    assert call["factory"] is True
    assert (call["host"], call["port"], call["workers"]) == ("127.0.0.1", 8000, 1)
    assert call["log_level"] == "info"
    assert call["timeout_graceful_shutdown"] == Settings().graceful_timeout
    assert call["metrics_dir"] is None


def test_flags(uvicorn_run: list[dict[str, Any]]) -> None:
    cli.main(["--host", "0.0.0.0", "--port", "9001", "--log-level", "warning"])
    (call,) = uvicorn_run
    assert (call["host"], call["port"], call["log_level"]) == ("0.0.0.0", 9001, "warning")


def test_grpc_and_model_control_flags_reach_the_workers(
    uvicorn_run: list[dict[str, Any]],
) -> None:
    """Workers build their apps from the environment: the CLI's flags go there."""
    assert cli.main([]) == 0
    assert os.environ["CNN_GRPC_PORT"] == "8081"
    assert os.environ["CNN_ENABLE_GRPC"] == "true"
    assert os.environ["CNN_MODEL_CONTROL_MODE"] == "none"
    argv = ["--grpc_port", "9002", "--enable-grpc", "false", "--model-control-mode", "explicit"]
    assert cli.main(argv) == 0
    assert os.environ["CNN_GRPC_PORT"] == "9002"
    assert os.environ["CNN_ENABLE_GRPC"] == "false"
    assert os.environ["CNN_MODEL_CONTROL_MODE"] == "explicit"
    assert Settings().grpc_port == 9002


def test_environment_gives_the_defaults(
    uvicorn_run: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CNN_HOST", "0.0.0.0")
    monkeypatch.setenv("CNN_PORT", "8123")
    monkeypatch.setenv("CNN_LOG_LEVEL", "debug")
    monkeypatch.setenv("CNN_GRACEFUL_TIMEOUT", "7")
    cli.main([])
    (call,) = uvicorn_run
    assert (call["host"], call["port"], call["log_level"]) == ("0.0.0.0", 8123, "debug")
    assert call["timeout_graceful_shutdown"] == 7
    cli.main(["--port", "8124"])  # a flag beats the environment
    assert uvicorn_run[1]["port"] == 8124


def test_several_workers_share_metrics_through_a_fresh_directory(
    uvicorn_run: list[dict[str, Any]],
) -> None:
    cli.main(["--workers", "3"])
    (call,) = uvicorn_run
    assert call["workers"] == 3
    assert call["metrics_dir"] is not None
    assert not Path(call["metrics_dir"]).exists()  # removed once the server stopped
    assert cli.MULTIPROC_ENV not in os.environ


@pytest.mark.parametrize(
    ("argv", "env"),
    [
        (["--port", "70000"], {}),
        (["--workers", "0"], {}),
        (["--log-level", "loud"], {}),
        ([], {"CNN_LOG_LEVEL": "loud"}),
        ([], {"CNN_PORT": "eighty"}),
        ([], {"CNN_MAX_ELEMENTS": "0"}),
        (["--grpc-port", "8000"], {}),
        (["--enable-grpc", "maybe"], {}),
        (["--model-control-mode", "poll"], {}),
    ],
    ids=[
        "port",
        "workers",
        "log-level",
        "env-log-level",
        "env-port",
        "env-limit",
        "grpc-port-clash",
        "enable-grpc",
        "model-control",
    ],
)
def test_bad_flags_and_environment_exit_with_status_2(
    uvicorn_run: list[dict[str, Any]],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    env: dict[str, str],
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    try:
        status = cli.main(argv)
    except SystemExit as exc:
        status = int(exc.code or 0)
    assert status == 2
    assert uvicorn_run == []
    assert capsys.readouterr().err


def test_readme_documents_every_setting() -> None:
    text = README.read_text()
    documented = set(re.findall(r"`(CNN_[A-Z_]+)`", text))
    assert {f"CNN_{name.upper()}" for name in Settings.model_fields} <= documented
