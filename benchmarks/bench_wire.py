"""What the wire costs: the service's round trips against the floor of the same stack.

The floor is a bare ASGI app (:func:`echo_app`, below) that reads the request body and
sends it back, run by the same uvicorn call as ``cnn-service`` (one worker, uvloop and
httptools when installed) and called through the same ``httpx.Client`` with the same
bytes. A row's ratio divides its median round trip by the median of its floor:

- big rows (conv x (4,16,128,128) float32, w (16,16,3,3), padding 1): the echo of the
  V2 binary request body (4 MiB of x, 9 KiB of w) **plus** the same conv computed in
  this process (``cnncore.conv2d_forward``, with the service's malloc settings);
- tiny rows: the echo of the tutorial's 3×3 ``/v1/conv2d/forward`` body.

The benchmark process computes with the service's settings (glibc malloc thresholds,
``OPENBLAS_THREAD_TIMEOUT``; see :mod:`service.runtime`).

Every row, floor and compute included, runs once per round in the same order, so all
see the same machine load; the table shows medians over ``--rounds`` rounds (tiny rows
take the median of ``TINY_CALLS`` calls within each round). A timed call sends request
bytes built once beforehand and ends with the response decoded into a numpy array (for
the echo: its bytes viewed as one). The first call of every row is checked against the
in-process result.

Two more columns help on a busy machine, where every median grows with the load and
the ratios shrink: the minimum over the rounds (the least disturbed call, and its ratio
to the floor's minima), and the CPU time per call of the client process plus the
server process (read from ``/proc``), with its ratio to the floor's.

Rows (targets from the V2 issue):

- ``V2 binary``: ``POST /v2/models/conv/infer``, Triton's binary tensor extension in and
  out; <= 1.5 × floor. Shown once the service has ``/v2`` (it is skipped otherwise).
- ``/v1 b64``: ``POST /v1/conv2d/forward`` with base64 tensors both ways; <= 2.0 × floor.
- ``/v1 tiny``, ``V2 tiny``: the tutorial's example; a 1×1×8×8 V2 infer (JSON ``data``
  and binary); <= 2.0 × the tiny echo.
- ``KServe peer``: the V2 binary request against KServe's Python model server serving
  the same conv (``benchmarks/kserve_peer.py``), when ``--kserve-python`` names a
  Python that has ``kserve`` installed; it is slow (~1 s a call), so it runs in the
  first ``--peer-rounds`` rounds only. No target: the ratio is reported.

Usage::

    python -m benchmarks.bench_wire                       # 20 rounds
    python -m benchmarks.bench_wire --rounds 40 --kserve-python /tmp/kserve-venv/bin/python
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import pybase64

if __package__ in (None, ""):  # run as a script: make the packages importable from a checkout
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import cnncore
from service.client import loads as client_loads
from service.runtime import BLAS_THREAD_TIMEOUT, BLAS_THREAD_TIMEOUT_ENV, tune_malloc
from service.testing import free_port, serve_process

ROOT = Path(__file__).resolve().parent.parent

X_SHAPE = (4, 16, 128, 128)
W_SHAPE = (16, 16, 3, 3)
PADDING = 1
TINY_X_SHAPE = (1, 1, 8, 8)
TINY_CALLS = 5
#: The tutorial's worked example (the OpenAPI example of /v1/conv2d/forward).
TUTORIAL_CONV = {
    "x": [[[[1, 2, 3], [4, 5, 6], [7, 8, 9]]]],
    "w": [[[[1, 0], [0, -1]]]],
    "b": [0.5],
    "stride": 1,
    "padding": 0,
}
BIG_MODEL = "conv"
TINY_MODEL = "tiny"


# -- the floor --------------------------------------------------------------------------


async def echo_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """ASGI app answering every HTTP request with its own body (and ``Content-Type``);
    with an ``X-Echo-Bytes: N`` header, with the body's first ``N`` bytes only (the floor
    of a request whose answer is smaller than its body)."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    chunks = []
    more = True
    while more:
        message = await receive()
        chunks.append(message.get("body", b""))
        more = message.get("more_body", False)
    body = b"".join(chunks)
    request_headers = dict(scope["headers"])
    if b"x-echo-bytes" in request_headers:
        body = body[: int(request_headers[b"x-echo-bytes"])]
    content_type = request_headers.get(b"content-type", b"application/octet-stream")
    headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def run_echo(port: int) -> None:
    """Serve :func:`echo_app` exactly as ``service.cli.main`` serves the app."""
    import uvicorn

    uvicorn.run(echo_app, host="127.0.0.1", port=port, workers=1, log_level="warning")


# -- request bodies ---------------------------------------------------------------------


def b64_tensor(arr: np.ndarray) -> dict[str, Any]:
    """``{shape, dtype, b64}`` of ``arr`` (the /v1 wire form)."""
    le = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<"))
    return {
        "shape": list(arr.shape),
        "dtype": arr.dtype.name,
        "b64": pybase64.b64encode(le.data).decode("ascii"),
    }


def v2_binary_request(x: np.ndarray) -> tuple[bytes, dict[str, str]]:
    """Body and headers of a V2 infer with ``x`` as binary data and ``out`` asked in binary
    (Triton's binary tensor data extension)."""
    header = orjson.dumps(
        {
            "inputs": [
                {
                    "name": "x",
                    "shape": list(x.shape),
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": x.nbytes},
                }
            ],
            "outputs": [{"name": "out", "parameters": {"binary_data": True}}],
        }
    )
    headers = {
        "Content-Type": "application/octet-stream",
        "Inference-Header-Content-Length": str(len(header)),
    }
    return header + np.ascontiguousarray(x, dtype="<f4").tobytes(), headers


def v2_json_request(x: np.ndarray) -> bytes:
    """Body of a V2 infer with ``x`` as a flat JSON ``data`` list."""
    return orjson.dumps(
        {"inputs": [{"name": "x", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel()}]},
        option=orjson.OPT_SERIALIZE_NUMPY,
    )


def decode_v2(response: httpx.Response) -> np.ndarray:
    """The ``out`` tensor of a V2 infer response, binary or JSON."""
    length = response.headers.get("inference-header-content-length")
    content = response.content
    header = orjson.loads(content[: int(length)] if length else content)
    (out,) = (o for o in header["outputs"] if o["name"] == "out")
    if "binary_data_size" in out.get("parameters", {}):
        start = int(length)
        raw = memoryview(content)[start : start + out["parameters"]["binary_data_size"]]
        return np.frombuffer(raw, dtype="<f4").reshape(out["shape"])
    return np.asarray(out["data"], dtype=np.float32).reshape(out["shape"])


def decode_v1(response: httpx.Response) -> np.ndarray:
    """The ``out`` tensor of a /v1 forward response, b64 or nested list, decoded as
    :class:`service.client.Client` decodes it."""
    out = client_loads(response.content)["out"]
    if isinstance(out, dict):
        raw = out["b64"] if isinstance(out["b64"], bytes) else pybase64.b64decode(out["b64"])
        dtype = np.dtype(out["dtype"]).newbyteorder("<")
        return np.frombuffer(raw, dtype=dtype).reshape(out["shape"])
    return np.asarray(out)


def model_repository(folder: Path, w: np.ndarray, tiny: list[dict[str, Any]]) -> Path:
    """A repository with the big conv model and the tiny 1×1×8×8 network (native format)."""
    for name, shape, layers in (
        (BIG_MODEL, [-1, *X_SHAPE[1:]], [{"type": "conv2d", "w": w, "padding": PADDING}]),
        (TINY_MODEL, [-1, *TINY_X_SHAPE[1:]], tiny),
    ):
        wire = [
            {k: b64_tensor(v) if isinstance(v, np.ndarray) else v for k, v in layer.items()}
            for layer in layers
        ]
        model = {"inputs": [{"name": "x", "datatype": "FP32", "shape": shape}], "layers": wire}
        (folder / name).mkdir()
        (folder / name / "model.json").write_bytes(orjson.dumps(model))
    return folder


def tiny_network(rng: np.random.Generator) -> list[dict[str, Any]]:
    """conv 1→4 3×3 pad 1, relu, linear 256→10: a digits-sized classifier."""
    f32 = np.float32
    return [
        {"type": "conv2d", "w": rng.standard_normal((4, 1, 3, 3)).astype(f32), "padding": 1},
        {"type": "relu"},
        {"type": "flatten"},
        {"type": "linear", "w": rng.standard_normal((256, 10)).astype(f32) * 0.1},
    ]


def tiny_forward(x: np.ndarray, layers: list[dict[str, Any]]) -> np.ndarray:
    """The tiny network in process (the oracle of the tiny V2 rows)."""
    out, _ = cnncore.conv2d_forward(x, layers[0]["w"], padding=1)
    out, _ = cnncore.relu_forward(out)
    out, _ = cnncore.linear_forward(out.reshape(len(out), -1), layers[3]["w"])
    return out


def workload() -> tuple[
    np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[dict[str, Any]], np.ndarray
]:
    """The rows' inputs and in-process answers, the same in every benchmark that sets the
    service against its floor: ``x, w, conv out, tiny x, tiny network, tiny out``."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal(X_SHAPE).astype(np.float32)
    w = rng.standard_normal(W_SHAPE).astype(np.float32)
    expect, _ = cnncore.conv2d_forward(x, w, padding=PADDING)
    tiny_x = rng.standard_normal(TINY_X_SHAPE).astype(np.float32)
    tiny = tiny_network(rng)
    return x, w, expect, tiny_x, tiny, tiny_forward(tiny_x, tiny)


# -- timing -----------------------------------------------------------------------------


@dataclass
class Row:
    """One timed call: ``call()`` returns the decoded result (checked once against
    ``expect``)."""

    name: str
    call: Callable[[], Any]
    expect: np.ndarray | None = None
    floor: str | None = None  # name of the floor row the ratio divides by
    target: float | None = None
    calls: int = 1  # calls per round; the round's value is their median
    rounds: int | None = None  # only in the first ``rounds`` rounds
    server: int | None = None  # pid of the server process whose CPU time is counted too
    times: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)  # client + server CPU ms per call

    def check(self) -> None:
        got = self.call()
        if self.expect is not None:
            # float32 results of the same conv computed by the same code on both sides of
            # the wire: they must agree to a few ulps (threads may split sums differently).
            np.testing.assert_allclose(got, self.expect, rtol=1e-5, atol=1e-5 * 144)

    def time_round(self) -> None:
        samples = []
        cpu_start = time.process_time() * 1e3 + cpu_ms(self.server)
        for _ in range(self.calls):
            start = time.perf_counter()
            self.call()
            samples.append((time.perf_counter() - start) * 1e3)
        cpu_end = time.process_time() * 1e3 + cpu_ms(self.server)
        self.times.append(statistics.median(samples))
        self.cpu.append((cpu_end - cpu_start) / self.calls)

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def cpu_mean(self) -> float:
        # The server's CPU time moves in clock ticks (10 ms): a mean over every round
        # is accurate, a median of rounds would be quantised.
        return statistics.fmean(self.cpu)

    def spread(self) -> str:
        if len(self.times) < 4:
            return "n/a"
        q = statistics.quantiles(self.times, n=4)
        return f"{q[0]:.1f}–{q[2]:.1f}"


_TICK_MS = 1e3 / os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 0.0


def cpu_ms(pid: int | None) -> float:
    """User + system CPU time of process ``pid`` (all its threads) in ms; 0 without one,
    NaN when it cannot be read (an unknown server, or not Linux)."""
    if pid is None:
        return 0.0
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return math.nan
    fields = stat.rpartition(")")[2].split()  # after the command name, which may hold spaces
    return (int(fields[11]) + int(fields[12])) * _TICK_MS


def post(
    http: httpx.Client, path: str, body: bytes, headers: dict[str, str]
) -> Callable[[], httpx.Response]:
    def call() -> httpx.Response:
        response = http.post(path, content=body, headers=headers)
        if response.status_code != 200:
            raise RuntimeError(f"{path}: {response.status_code} {response.text[:300]}")
        return response

    return call


def then(call: Callable[[], httpx.Response], decode: Callable[[httpx.Response], Any]) -> Any:
    return lambda: decode(call())


def has_v2_model(http: httpx.Client, model: str) -> bool:
    try:
        return http.get(f"/v2/models/{model}/ready").status_code == 200
    except httpx.HTTPError:
        return False


@contextlib.contextmanager
def echo_server() -> Iterator[tuple[str, int]]:
    port = free_port()
    argv = [sys.executable, "-m", "benchmarks.bench_wire", "--serve-echo", str(port)]
    env = {"PYTHONPATH": str(ROOT)}
    with serve_process(argv, port=port, env=env) as (url, proc):
        yield url, proc.pid


@contextlib.contextmanager
def kserve_server(python: str | None, weights: Path) -> Iterator[tuple[str, int] | None]:
    """KServe's Python model server serving the big conv (``benchmarks/kserve_peer.py``),
    or ``None`` without ``python``. Stopped (SIGTERM, then SIGKILL) on exit."""
    if not python:
        yield None
        return
    port, grpc_port = free_port(), free_port()
    argv = [python, str(ROOT / "benchmarks" / "kserve_peer.py"), "--weights", str(weights)]
    argv += ["--http_port", str(port), "--grpc_port", str(grpc_port)]
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 120
            while True:
                if proc.poll() is not None or time.monotonic() > deadline:
                    log.seek(0)
                    tail = log.read().decode(errors="replace")[-3000:]
                    raise RuntimeError(f"the KServe peer did not become ready:\n{tail}")
                with contextlib.suppress(httpx.TransportError):
                    if (
                        httpx.get(f"{url}/v2/models/{BIG_MODEL}/ready", timeout=1).status_code
                        == 200
                    ):
                        break
                time.sleep(0.2)
            yield url, proc.pid
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def machine_state() -> str:
    load = " ".join(f"{v:.2f}" for v in os.getloadavg())
    return f"load average {load} at the start; {os.cpu_count()} CPUs"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=20, help="interleaved rounds (%(default)s)")
    parser.add_argument(
        "--kserve-python", help="a Python with kserve installed: adds the KServe peer row"
    )
    parser.add_argument("--peer-rounds", type=int, default=5, help="rounds of the peer row")
    parser.add_argument(
        "--url",
        help="a service already running (another checkout, to compare); its V2 rows need "
        "the models of --write-repository, and its CPU time is not counted",
    )
    parser.add_argument(
        "--write-repository", metavar="DIR", help="write the benchmark's model repository, exit"
    )
    parser.add_argument("--serve-echo", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_echo:
        run_echo(args.serve_echo)
        return 0

    if os.environ.get(BLAS_THREAD_TIMEOUT_ENV) is None:
        # The in-process compute must run with the service's OpenBLAS setting, which
        # OpenBLAS reads only when it loads: start again with it in the environment.
        path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
        env = {**os.environ, BLAS_THREAD_TIMEOUT_ENV: BLAS_THREAD_TIMEOUT, "PYTHONPATH": path}
        again = sys.argv[1:] if argv is None else argv
        os.execve(sys.executable, [sys.executable, "-m", "benchmarks.bench_wire", *again], env)
    tune_malloc()  # the service does this at start-up; the in-process compute must too
    x, w, expect, tiny_x, tiny, tiny_expect = workload()
    tutorial_expect, _ = cnncore.conv2d_forward(
        np.asarray(TUTORIAL_CONV["x"], float),
        np.asarray(TUTORIAL_CONV["w"], float),
        np.asarray(TUTORIAL_CONV["b"], float),
    )

    v2_body, v2_headers = v2_binary_request(x)
    v1_body = orjson.dumps(
        {"x": b64_tensor(x), "w": b64_tensor(w), "padding": PADDING, "encoding": "b64"}
    )
    json_headers = {"Content-Type": "application/json"}
    tiny_v1_body = orjson.dumps(TUTORIAL_CONV)
    tiny_bin_body, tiny_bin_headers = v2_binary_request(tiny_x)
    tiny_json_body = v2_json_request(tiny_x)
    if args.write_repository:
        model_repository(Path(args.write_repository), w, tiny)
        return 0
    print(machine_state())

    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-wire-")))
        repo = model_repository(tmp, w, tiny)
        np.save(repo / BIG_MODEL / "weights.npy", w)  # for the KServe peer
        env = {"CNN_LOG_LEVEL": "warning", "CNN_MODEL_REPOSITORY": str(repo)}
        service_pid = -1  # unknown: its CPU time shows as n/a
        if args.url:
            service_url = args.url
        else:
            service_url, service_proc = stack.enter_context(serve_process(env=env))
            service_pid = service_proc.pid
        echo_url, echo_pid = stack.enter_context(echo_server())
        peer = stack.enter_context(
            kserve_server(args.kserve_python, repo / BIG_MODEL / "weights.npy")
        )
        client = lambda url: stack.enter_context(httpx.Client(base_url=url, timeout=300))  # noqa: E731
        svc, echo = client(service_url), client(echo_url)

        def echo_decode(r: httpx.Response) -> np.ndarray:
            return np.frombuffer(r.content, dtype=np.uint8)

        floor_big = "echo 4 MiB + compute"
        rows = [
            Row(
                "echo 4 MiB",
                then(post(echo, "/", v2_body, v2_headers), echo_decode),
                server=echo_pid,
            ),
            Row("compute in process", lambda: cnncore.conv2d_forward(x, w, padding=PADDING)),
            Row(
                "echo tiny",
                then(post(echo, "/", tiny_v1_body, json_headers), echo_decode),
                calls=TINY_CALLS,
                server=echo_pid,
            ),
        ]
        notes = []
        v2 = has_v2_model(svc, BIG_MODEL)
        infer = f"/v2/models/{BIG_MODEL}/infer"
        if v2:
            rows.append(
                Row(
                    "V2 binary",
                    then(post(svc, infer, v2_body, v2_headers), decode_v2),
                    expect,
                    floor_big,
                    1.5,
                    server=service_pid,
                )
            )
        else:
            notes.append("V2 rows skipped: the service has no /v2 infer for the model yet")
        rows.append(
            Row(
                "/v1 b64",
                then(post(svc, "/v1/conv2d/forward", v1_body, json_headers), decode_v1),
                expect,
                floor_big,
                2.0,
                server=service_pid,
            )
        )
        rows.append(
            Row(
                "/v1 tiny (tutorial 3×3)",
                then(post(svc, "/v1/conv2d/forward", tiny_v1_body, json_headers), decode_v1),
                tutorial_expect,
                "echo tiny",
                2.0,
                TINY_CALLS,
                server=service_pid,
            )
        )
        if v2:
            tiny_infer = f"/v2/models/{TINY_MODEL}/infer"
            rows.append(
                Row(
                    "V2 tiny 1×1×8×8 JSON",
                    then(post(svc, tiny_infer, tiny_json_body, json_headers), decode_v2),
                    tiny_expect,
                    "echo tiny",
                    2.0,
                    TINY_CALLS,
                    server=service_pid,
                )
            )
            rows.append(
                Row(
                    "V2 tiny 1×1×8×8 binary",
                    then(post(svc, tiny_infer, tiny_bin_body, tiny_bin_headers), decode_v2),
                    tiny_expect,
                    "echo tiny",
                    2.0,
                    TINY_CALLS,
                    server=service_pid,
                )
            )
        if peer:
            peer_url, peer_pid = peer
            rows.append(
                Row(
                    "KServe 0.21 peer, V2 binary",
                    then(post(client(peer_url), infer, v2_body, v2_headers), decode_v2),
                    expect,
                    floor_big,
                    None,
                    rounds=args.peer_rounds,
                    server=peer_pid,
                )
            )
        else:
            notes.append("KServe peer skipped (give --kserve-python PYTHON with kserve installed)")

        for row in rows:  # warm-up and check
            row.check()
        for i in range(args.rounds):
            for row in rows:
                if row.rounds is None or i < row.rounds:
                    row.time_round()
        print_table(rows, args, floor_big)
        for note in notes:
            print(f"- {note}")
    return 0


def print_table(rows: list[Row], args: argparse.Namespace, floor_big: str) -> None:
    by_name = {row.name: row for row in rows}
    echo_big, compute, echo_tiny = (
        by_name[n] for n in ("echo 4 MiB", "compute in process", "echo tiny")
    )
    floors = {floor_big: echo_big.median + compute.median, "echo tiny": echo_tiny.median}
    min_floors = {
        floor_big: min(echo_big.times) + min(compute.times),
        "echo tiny": min(echo_tiny.times),
    }
    cpu_floors = {
        floor_big: echo_big.cpu_mean + compute.cpu_mean,
        "echo tiny": echo_tiny.cpu_mean,
    }
    print(
        f"conv x {X_SHAPE} float32, w {W_SHAPE}, padding {PADDING}; median of "
        f"{args.rounds} interleaved rounds (tiny rows: median of {TINY_CALLS} calls a round)\n"
    )
    header = ["request", "median ms", "IQR ms", "floor", "floor ms", "ratio", "target"]
    header += ["result", "min ms", "ratio of mins", "CPU ms", "CPU ratio"]
    print("| " + " | ".join(header) + " |")
    print("|---|---:|---:|---|---:|---:|---:|---|---:|---:|---:|---:|")
    for row in rows:
        cells = [row.name, f"{row.median:.2f}", row.spread()]
        if row.floor is None:
            cells += ["", "", "", "", "", f"{min(row.times):.2f}", ""]
            cells += [f"{row.cpu_mean:.1f}".replace("nan", "n/a"), ""]
        else:
            ratio = row.median / floors[row.floor]
            cells += [row.floor, f"{floors[row.floor]:.2f}", f"{ratio:.2f}"]
            if row.target is None:
                cells += ["report", ""]
            else:
                cells += [f"≤ {row.target:g}", "PASS" if ratio <= row.target else "FAIL"]
            cells += [f"{min(row.times):.2f}", f"{min(row.times) / min_floors[row.floor]:.2f}"]
            cpu_ratio = row.cpu_mean / cpu_floors[row.floor]
            cells += [f"{row.cpu_mean:.1f}", f"{cpu_ratio:.2f}"]
            cells[-2:] = [c.replace("nan", "n/a") for c in cells[-2:]]
        print("| " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    sys.exit(main())
