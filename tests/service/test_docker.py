"""The Dockerfile: linted by hadolint, and its commands run here without a Docker engine.

tests/deploy/test_image.py builds it with buildah and calls the image where it can.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from service.client import Client
from service.testing import free_port, serve

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"


def _instructions() -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` pairs, continuation lines joined, comments dropped."""
    lines = [ln for ln in DOCKERFILE.read_text().splitlines() if not ln.lstrip().startswith("#")]
    text = "\n".join(lines).replace("\\\n", " ")
    pairs = []
    for line in text.splitlines():
        if line.strip():
            keyword, _, args = line.strip().partition(" ")
            pairs.append((keyword.upper(), args.strip()))
    return pairs


def _one(keyword: str) -> str:
    (args,) = [a for k, a in _instructions() if k == keyword]
    return args


def _tool(name: str) -> str:
    """A console script of this environment (the venv may not be on PATH)."""
    here = Path(sys.executable).parent / name
    found = str(here) if here.exists() else shutil.which(name)
    assert found, f"{name} is not installed (pip install -e '.[dev]')"
    return found


def test_hadolint_finds_no_errors() -> None:
    done = subprocess.run(
        [_tool("hadolint"), "--failure-threshold", "error", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_image_layout() -> None:
    steps = _instructions()
    keywords = [k for k, _ in steps]
    assert steps[0] == ("ARG", "BASE=python:3.11-slim")
    froms = [a for k, a in steps if k == "FROM"]
    assert froms == ["${BASE} AS wheel", "${BASE}"]  # the wheel is built, then installed
    final = len(steps) - keywords[::-1].index("FROM")
    run_stage = steps[final:]
    # Dependencies are installed before the project's wheel arrives, so they stay cached.
    deps = next(i for i, (k, a) in enumerate(run_stage) if k == "RUN" and "requirements" in a)
    wheel = next(i for i, (k, a) in enumerate(run_stage) if k == "COPY" and "--from=wheel" in a)
    assert deps < wheel
    assert "--no-deps" in next(a for k, a in run_stage[wheel:] if k == "RUN")
    assert not [a for k, a in run_stage if k == "COPY" and "service" in a.split()]
    user = _one("USER")
    assert user.split(":")[0] not in ("root", "0")
    assert keywords.index("USER") > final + wheel
    assert _one("EXPOSE") == "8000 8081"  # HTTP, gRPC
    assert "/health/ready" in _one("HEALTHCHECK")
    assert json.loads(_one("CMD")) == ["cnn-service", "--host", "0.0.0.0"]


def test_dependency_step_lists_the_project_dependencies(tmp_path: Path) -> None:
    run = next(a for k, a in _instructions() if k == "RUN" and "requirements.txt" in a)
    argv = shlex.split(run)
    command = argv[: argv.index(">")]  # python -c "... print the dependencies ..."
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    out = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, check=True)
    listed = out.stdout.split()
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11, as in the image
    with (ROOT / "pyproject.toml").open("rb") as f:
        project = tomllib.load(f)["project"]
    # The run-time dependencies and onnxruntime (plain ONNX inference runs on it).
    assert listed == project["dependencies"] + project["optional-dependencies"]["onnxruntime"]
    for line in listed:  # and this environment, which the tests run in, satisfies them
        req = Requirement(line)
        try:
            assert req.specifier.contains(version(req.name), prereleases=True), line
        except PackageNotFoundError:
            pytest.fail(f"{req.name} is not installed")


def _healthcheck() -> list[str]:
    args = _one("HEALTHCHECK")
    argv: list[str] = json.loads(args[args.index("CMD") + len("CMD") :])
    return argv


def _cmd_on_loopback() -> list[str]:
    argv: list[str] = json.loads(_one("CMD"))
    argv[argv.index("--host") + 1] = "127.0.0.1"  # the container listens on all interfaces
    return [_tool(argv[0]), *argv[1:]]


@pytest.mark.slow
def test_image_start_command_serves_and_passes_its_healthcheck() -> None:
    port = free_port()
    env = {"CNN_PORT": str(port)}  # the image would publish 8000; here any free port
    with serve(_cmd_on_loopback(), port=port, env=env) as base_url:
        check = subprocess.run(
            _healthcheck(), env={**os.environ, **env}, capture_output=True, timeout=30, check=False
        )
        assert check.returncode == 0, check.stderr
        with Client(base_url) as api:
            assert api.info()["service"] == "cnn-service"
    # With the server gone the same check fails, as Docker's would.
    check = subprocess.run(
        _healthcheck(), env={**os.environ, **env}, capture_output=True, timeout=30, check=False
    )
    assert check.returncode != 0
