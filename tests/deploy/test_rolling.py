"""Three real replicas behind a real nginx, rolled and crashed under checked load.

1. The operator's nginx (deploy/nginx/cnn-service.conf.template as shipped: passive health
   checks, POSTs retried on the next replica): every replica in turn gets SIGTERM, drains,
   restarts on its port and becomes ready; then one is SIGKILLed while it computes. No
   request may fail or be wrong, and the crash's in-flight requests are retried to success.
2. The Kubernetes way: the same file rendered without POST retries and without passive
   checks (like a Service), the upstream rewritten and reloaded (``nginx -s reload``) as the
   endpoints controller would: a new replica starts (maxSurge 1), and the moment it is ready
   the old one leaves the upstream and gets SIGTERM. Only CNN_SHUTDOWN_DELAY keeps that
   from losing requests; none may fail.

Every answer is checked against cnncore computed here. Figures (requests, p50/p95 latency
through nginx, drain times) are reported in the terminal summary and in the pytest cache
(``.pytest_cache/v/cnn-service/rolling``); nothing about them is asserted.
"""

from __future__ import annotations

import base64
import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx
import numpy as np
import orjson
import pytest

import cnncore
from service.testing import free_port

from ..service.v2_models import core_layers, model_doc, tiny_cnn_layers, write_model
from ..service.wire import in_flight
from .conftest import ROLLING_REPORT
from .manifests import ROOT

pytestmark = pytest.mark.slow

TEMPLATE = ROOT / "deploy" / "nginx" / "cnn-service.conf.template"
RETRY_ALL = "proxy_next_upstream error timeout http_503 non_idempotent;"
#: nginx's default: connection errors and timeouts retried for idempotent methods only.
RETRY_IDEMPOTENT = "proxy_next_upstream error timeout;"
SHUTDOWN_DELAY = 2.0  # seconds a replica keeps serving after SIGTERM (the pods use 10)
CLIENTS = 4  # concurrent load threads
START_TIMEOUT = 90.0  # a safety net only: a loaded 2-core machine starts a replica in ~3-15 s
#: float64 answers of the same cnncore code: only summation order may differ, by at most
#: (terms per sum) x eps64 x (sum of |terms|). The longest sums (the heavy conv) have
#: 64*49 = 3136 products of two standard normals, E|xy| = 2/pi, so sum |terms| ~ 2000 and
#: the bound is 3136 * 2.2e-16 * 2000 = 1.4e-9; 1e-8 leaves a factor of 7.
ATOL = 1e-8


# --------------------------------------------------------------------------- the load


@dataclass(frozen=True)
class Case:
    """One request and the answer it must get."""

    kind: str
    path: str
    body: bytes
    expected: np.ndarray
    read: Callable[[dict[str, Any]], np.ndarray]


def _b64(arr: np.ndarray) -> dict[str, Any]:
    return {
        "shape": list(arr.shape),
        "dtype": "float64",
        "b64": base64.b64encode(arr.tobytes()).decode(),
    }


def _from_b64(tensor: dict[str, Any]) -> np.ndarray:
    dtype = np.dtype(tensor["dtype"]).newbyteorder("<")
    return np.frombuffer(base64.b64decode(tensor["b64"]), dtype=dtype).reshape(tensor["shape"])


def _cases(rng: np.random.Generator, tiny: list[dict[str, Any]]) -> list[Case]:
    """Distinct inputs of each kind, so a mixed-up answer cannot pass for a right one."""
    cases = []
    for _ in range(3):
        x, w, b = (
            rng.standard_normal((2, 3, 8, 8)),
            rng.standard_normal((4, 3, 3, 3)),
            rng.standard_normal(4),
        )
        out, _ = cnncore.conv2d_forward(x, w, b, padding=1)
        body = {"x": _b64(x), "w": _b64(w), "b": _b64(b), "padding": 1, "encoding": "b64"}
        cases.append(
            Case(
                "conv", "/v1/conv2d/forward", orjson.dumps(body), out, lambda r: _from_b64(r["out"])
            )
        )

        x = rng.standard_normal((2, 3, 8, 8))
        out, _ = cnncore.pool2d_forward(x, kernel_size=2, mode="max")
        body = {"x": _b64(x), "kernel_size": 2, "mode": "max", "encoding": "b64"}
        cases.append(
            Case(
                "pool", "/v1/pool2d/forward", orjson.dumps(body), out, lambda r: _from_b64(r["out"])
            )
        )

        x = rng.standard_normal((2, 1, 6, 6))
        out, _ = cnncore.network_forward(x, core_layers(tiny))
        request = {
            "inputs": [
                {
                    "name": "x",
                    "shape": list(x.shape),
                    "datatype": "FP64",
                    "data": x.ravel().tolist(),
                }
            ]
        }
        cases.append(
            Case(
                "v2-infer",
                "/v2/models/tiny/infer",
                orjson.dumps(request),
                out,
                lambda r: np.asarray(r["outputs"][0]["data"]).reshape(r["outputs"][0]["shape"]),
            )
        )
    # A heavier computation (~0.1 GFLOP), so that each replica has work in flight when killed.
    x, w = rng.standard_normal((1, 64, 16, 16)), rng.standard_normal((64, 64, 7, 7))
    out, _ = cnncore.conv2d_forward(x, w, padding=3)
    body = {"x": _b64(x), "w": _b64(w), "padding": 3, "encoding": "b64"}
    cases.append(
        Case(
            "heavy-conv",
            "/v1/conv2d/forward",
            orjson.dumps(body),
            out,
            lambda r: _from_b64(r["out"]),
        )
    )
    return cases


@dataclass
class Load:
    """Client threads sending the cases round-robin through nginx and checking every answer."""

    base_url: str
    cases: list[Case]
    latencies: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    sent: int = 0
    correct: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> None:
        for i in range(CLIENTS):
            thread = threading.Thread(target=self._run, args=(i,), daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=150)

    def snapshot(self) -> tuple[int, int, int]:
        with self._lock:
            return self.sent, self.correct, len(self.failures)

    def _run(self, offset: int) -> None:
        # No keep-alive to nginx: a reload closes nginx's idle client connections, a race
        # between this client and nginx that says nothing about the replicas behind it.
        limits = httpx.Limits(max_keepalive_connections=0)
        headers = {"content-type": "application/json"}
        with httpx.Client(base_url=self.base_url, timeout=120, limits=limits) as http:
            i = offset
            while not self._stop.is_set():
                case = self.cases[i % len(self.cases)]
                i += CLIENTS
                start = time.perf_counter()
                outcome = self._check(http, case, headers)
                elapsed = time.perf_counter() - start
                with self._lock:
                    self.sent += 1
                    self.latencies.append(elapsed)
                    if outcome is None:
                        self.correct += 1
                    else:
                        self.failures.append(f"{case.kind}: {outcome}")

    @staticmethod
    def _check(http: httpx.Client, case: Case, headers: dict[str, str]) -> str | None:
        try:
            r = http.post(case.path, content=case.body, headers=headers)
        except httpx.HTTPError as exc:
            return f"{type(exc).__name__}: {exc}"
        if r.status_code != 200:
            return f"HTTP {r.status_code}: {r.text[:200]}"
        try:
            got = case.read(orjson.loads(r.content))
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            return f"unreadable answer ({type(exc).__name__}): {r.text[:200]}"
        if got.shape != case.expected.shape or not np.allclose(
            got, case.expected, rtol=0, atol=ATOL
        ):
            return "wrong answer"
        return None


# --------------------------------------------------------------------------- replicas


class Replica:
    """One ``python -m service`` process on a loopback port."""

    def __init__(self, folder: Path, env: dict[str, str], port: int | None = None) -> None:
        self.port = port or free_port()
        self.folder = folder
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None
        self.log: IO[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> Replica:
        if self.log is not None:
            self.log.close()
        self.log = (self.folder / f"replica-{self.port}.log").open("ab")
        argv = [sys.executable, "-m", "service", "--port", str(self.port)]
        self.proc = subprocess.Popen(argv, env=self.env, stdout=self.log, stderr=subprocess.STDOUT)
        return self

    def wait_ready(self) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"replica {self.port} exited:\n{self.tail()}"
            with contextlib.suppress(httpx.TransportError):
                if (
                    httpx.get(f"http://{self.address}/v2/health/ready", timeout=2).status_code
                    == 200
                ):
                    return
            time.sleep(0.05)
        pytest.fail(f"replica {self.port} not ready within {START_TIMEOUT:g} s:\n{self.tail()}")

    def terminate(self) -> float:
        """SIGTERM, wait for the exit; returns the drain time (signal to exit) in seconds."""
        return self.drained(self.signal_term())

    def signal_term(self) -> float:
        """Send SIGTERM; returns when (``time.monotonic()``)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return time.monotonic()

    def drained(self, since: float) -> float:
        """Wait for the exit after SIGTERM; seconds from ``since`` to the exit."""
        assert self.proc is not None
        self.proc.wait(timeout=SHUTDOWN_DELAY + 30)
        assert self.proc.returncode in (0, -signal.SIGTERM), self.tail()
        return time.monotonic() - since

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        if self.log is not None:
            self.log.close()

    def tail(self) -> str:
        return (self.folder / f"replica-{self.port}.log").read_text(errors="replace")[-3000:]


# --------------------------------------------------------------------------- nginx


def _nginx() -> str:
    found = shutil.which("nginx") or (
        "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None
    )
    if found is None:
        pytest.skip(
            "nginx is not installed; .ci/run installs it from Debian's packages "
            "(apt-get install nginx-light), which this machine could not do"
        )
    return found


def render(template: str, listen: int, servers: list[str], *, kubernetes_way: bool = False) -> str:
    """The shipped template with its variables filled and one ``server`` line per replica.

    ``kubernetes_way``: no POST retries (nginx's default next-upstream rule) and no passive
    health checks, as a Service in front of pods: only the upstream list changes.
    """
    lines = re.findall(r"^ *server \$\{CNN_REPLICA_\d\}.*\n", template, flags=re.MULTILINE)
    assert len(lines) == 3, "the template lists three replicas"
    assert RETRY_ALL in template
    line = re.sub(r"\$\{CNN_REPLICA_\d\}", "${CNN_REPLICA}", lines[0])
    if kubernetes_way:
        template = template.replace(RETRY_ALL, RETRY_IDEMPOTENT)
        line = re.sub(r" max_fails=\S+ fail_timeout=\S+;", " max_fails=0;", line)
    block = "".join(_substitute(line, {"CNN_REPLICA": s}) for s in servers)
    text = template.replace(lines[0], block).replace(lines[1], "").replace(lines[2], "")
    return _substitute(text, {"CNN_LISTEN": f"127.0.0.1:{listen}"})


def _substitute(text: str, values: dict[str, str]) -> str:
    """``${CNN_*}`` replaced as the nginx image's envsubst does (only the variables it is
    given, so nginx's own ``$host`` and friends stay)."""
    return re.sub(r"\$\{(CNN_[A-Z0-9_]+)\}", lambda m: values[m[1]], text)


class Nginx:
    """nginx with its own prefix, the rendered template included in a minimal nginx.conf."""

    def __init__(self, folder: Path, binary: str) -> None:
        self.folder = folder
        self.binary = binary
        self.port = free_port()
        self.template = TEMPLATE.read_text()
        self.proc: subprocess.Popen[bytes] | None = None
        temp = " ".join(
            f"{k}_temp_path {folder / k};"
            for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        (folder / "nginx.conf").write_text(
            f"daemon off;\nworker_processes 1;\npid {folder / 'nginx.pid'};\n"
            f"error_log {folder / 'error.log'} notice;\nevents {{ worker_connections 1024; }}\n"
            "http {\n"
            "  log_format roll '$request_method $uri $status "
            '"$upstream_addr" "$upstream_status"\';\n'
            f"  access_log {folder / 'access.log'} roll;\n  {temp}\n"
            f"  include {folder / 'cnn-service.conf'};\n}}\n"
        )

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _command(self, *extra: str) -> list[str]:
        return [self.binary, "-p", str(self.folder), "-c", str(self.folder / "nginx.conf"), *extra]

    def configure(self, servers: list[str], *, kubernetes_way: bool = False) -> None:
        (self.folder / "cnn-service.conf").write_text(
            render(self.template, self.port, servers, kubernetes_way=kubernetes_way)
        )
        done = subprocess.run(self._command("-t"), capture_output=True, text=True, check=False)
        assert done.returncode == 0, done.stderr

    def start(self) -> None:
        self.proc = subprocess.Popen(
            self._command(), stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.TransportError):
                httpx.get(f"{self.base_url}/health/live", timeout=2)
                return
            time.sleep(0.05)
        pytest.fail(f"nginx did not start:\n{self.error_log()}")

    def reload(self, servers: list[str], *, kubernetes_way: bool = False) -> None:
        """Rewrite the upstream and ``nginx -s reload``; returns once new workers serve it."""
        psutil = pytest.importorskip("psutil")
        assert self.proc is not None
        master = psutil.Process(self.proc.pid)
        old = {p.pid for p in master.children()}
        self.configure(servers, kubernetes_way=kubernetes_way)
        subprocess.run(self._command("-s", "reload"), check=True, capture_output=True)
        deadline = time.monotonic() + 20
        while not {p.pid for p in master.children()} - old:
            assert time.monotonic() < deadline, f"nginx did not reload:\n{self.error_log()}"
            time.sleep(0.01)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)  # graceful
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def error_log(self) -> str:
        path = self.folder / "error.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def error_log_lines(self) -> list[str]:
        path = self.folder / "error.log"
        return path.read_text(errors="replace").splitlines() if path.exists() else []

    def access_log(self) -> list[str]:
        return (self.folder / "access.log").read_text().splitlines()


# --------------------------------------------------------------------------- the test


@pytest.fixture
def folder() -> Iterator[Path]:
    # Not tmp_path: its parent is private to root and nginx's workers run as nobody.
    path = Path(tempfile.mkdtemp(prefix="cnn-roll-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _percentiles(latencies: list[float]) -> tuple[float, float]:
    p50, p95 = np.percentile(np.asarray(latencies) * 1000, [50, 95])
    return float(p50), float(p95)


@pytest.mark.timeout(600)  # a safety net: ~1 min on an idle 2-core machine, 4.5 on a busy one
def test_rolls_and_a_crash_behind_nginx_lose_no_request(
    folder: Path, rng: np.random.Generator, request: pytest.FixtureRequest
) -> None:
    binary = _nginx()
    tiny = tiny_cnn_layers(rng)
    write_model(folder / "models", "tiny", model_doc(tiny, [-1, 1, 6, 6]))
    env = {
        **os.environ,
        "CNN_MODEL_REPOSITORY": str(folder / "models"),
        "CNN_SHUTDOWN_DELAY": str(SHUTDOWN_DELAY),
        "CNN_GRACEFUL_TIMEOUT": "20",
        "CNN_MAX_CONCURRENCY": "1",  # 3 replicas, nginx and the clients share the cores
        "CNN_MAX_QUEUE": "64",  # no 503 for being busy: the test is about restarts
        "CNN_QUEUE_TIMEOUT": "60",
        "OPENBLAS_NUM_THREADS": "1",
        "CNN_LOG_LEVEL": "warning",
    }
    replicas = [Replica(folder, env) for _ in range(3)]
    nginx = Nginx(folder, binary)
    figures: dict[str, Any] = {}
    load = Load(nginx.base_url, _cases(rng, tiny))
    try:
        for replica in replicas:
            replica.start()
        for replica in replicas:
            replica.wait_ready()
        nginx.configure([r.address for r in replicas])
        nginx.start()
        load.start()
        time.sleep(1)

        # 1. The operator's nginx: roll every replica in place, then crash one.
        drains = []
        for replica in replicas:
            drains.append(replica.terminate())
            replica.start().wait_ready()
            time.sleep(0.5)
        victim = replicas[1]
        # The logs are read first, so that the kill follows the in-flight reading at once:
        # a computation that ends in between would be cut off while it answers, which
        # nginx cannot retry (seen once in a full local run).
        logged_before_crash = len(nginx.access_log())
        errors_before_crash = len(nginx.error_log_lines())
        deadline = time.monotonic() + 30
        while in_flight(f"http://{victim.address}") < 1:  # kill it while it computes
            assert time.monotonic() < deadline, "the victim never had work in flight"
            time.sleep(0.005)
        victim.kill()
        victim.start().wait_ready()
        time.sleep(1)
        sent, correct, failed = load.snapshot()
        figures["operator"] = {
            "sent": sent,
            "correct": correct,
            "failed": failed,
            "drain_s": drains,
        }
        # Sent to the killed replica first, then to another, and answered: the retries.
        retried_after_crash = [
            line
            for line in nginx.access_log()[logged_before_crash:]
            if f'"{victim.address}, ' in line and line.split()[2] == "200"
        ]
        # nginx was waiting for an answer from it when it died: work in flight, lost there.
        cut_off = [
            line
            for line in nginx.error_log_lines()[errors_before_crash:]
            if "while reading response header from upstream" in line and victim.address in line
        ]

        # 2. The Kubernetes way: surge a new replica, then drop the old from the upstream
        #    and SIGTERM it at the same moment; nginx neither retries POSTs nor learns.
        nginx.reload([r.address for r in replicas], kubernetes_way=True)
        drains = []
        for i, old in enumerate(list(replicas)):
            new = Replica(folder, env).start()
            new.wait_ready()
            replicas[i] = new
            # SIGTERM first, the reload right after: the endpoints lag the signal, as in a cluster.
            signalled = old.signal_term()
            nginx.reload([r.address for r in replicas], kubernetes_way=True)
            drains.append(old.drained(signalled))
            old.stop()
        time.sleep(1)
    finally:
        load.stop()
        nginx.stop()
        for replica in replicas:
            replica.stop()

    sent, correct, failed = load.snapshot()
    p50, p95 = _percentiles(load.latencies)
    op = figures["operator"]
    figures["kubernetes"] = {
        "sent": sent - op["sent"],
        "correct": correct - op["correct"],
        "failed": failed - op["failed"],
        "drain_s": drains,
    }
    figures["total"] = {
        "sent": sent,
        "correct": correct,
        "failed": failed,
        "p50_ms": p50,
        "p95_ms": p95,
    }
    figures["retried_after_crash"] = len(retried_after_crash)
    figures["cut_off_by_crash"] = len(cut_off)
    _report(request, figures)

    assert not load.failures, (
        f"{len(load.failures)} failed, e.g. {load.failures[:5]}\n{_tracebacks(folder)}"
        f"\nnginx:\n{nginx.error_log()}"
    )
    assert correct == sent
    assert op["sent"] > 50  # the load really ran
    assert figures["kubernetes"]["sent"] > 50
    assert cut_off, "nginx saw no request cut off by the crash"
    # Every client got its correct answer (above), the cut-off requests included; the
    # access log shows nginx answering them from another replica. The two logs' counts
    # need not match (one request can log more than one upstream error line, and a line
    # can land after the snapshot), so only the retry's presence is asserted here.
    assert retried_after_crash, "no request was retried after the crash"


def _tracebacks(folder: Path) -> str:
    """The end of every replica log that holds a traceback (what a 500 logged)."""
    logs = sorted(folder.glob("replica-*.log"))
    texts = [(log.name, log.read_text(errors="replace")) for log in logs]
    return "\n".join(f"{name}:\n{text[-2500:]}" for name, text in texts if "Traceback" in text)


def _report(request: pytest.FixtureRequest, figures: dict[str, Any]) -> None:
    cache = getattr(request.config, "cache", None)  # absent under -p no:cacheprovider
    if cache is not None:
        cache.set("cnn-service/rolling", figures)

    def phase(title: str, f: dict[str, Any]) -> str:
        drains = ", ".join(f"{s:.2f}" for s in f["drain_s"])
        counts = f"sent {f['sent']}, correct {f['correct']}, failed {f['failed']}"
        return f"{title}: {counts}; drain s: {drains}"

    total = figures["total"]
    lines = [
        phase("operator nginx (retries) ", figures["operator"])
        + f"; cut off by the crash {figures['cut_off_by_crash']}, "
        f"retried after it {figures['retried_after_crash']}",
        phase("kubernetes way (no retry)", figures["kubernetes"]),
        f"through nginx: p50 {total['p50_ms']:.1f} ms, p95 {total['p95_ms']:.1f} ms "
        f"({CLIENTS} clients, shutdown delay {SHUTDOWN_DELAY:g} s)",
    ]
    request.config.stash.setdefault(ROLLING_REPORT, []).extend(lines)
