"""ResNet-18 from ONNX: cnncore's graph against onnxruntime and torch, side by side in one run.

ResNet-18 is built by hand in torch (torchvision's layout, random weights, no download)
and exported with the legacy exporter (opset 17, BatchNorm folded into the convolutions
as it does by default) when torch is importable; ``--onnx FILE`` uses an exported file
instead (then the torch rows are skipped unless torch is importable). Every library runs
at the same thread count (``--threads``, default all cores: numpy's BLAS through
threadpoolctl, onnxruntime's intra-op pool, torch.set_num_threads). The process raises
glibc's malloc thresholds first, as the service does at start-up
(:func:`service.runtime.tune_malloc`; ``--libc-malloc`` keeps the defaults): otherwise
every convolution faults its tens of MB of fresh columns in again (forward 1.46 s ->
1.09 s of CPU on one thread, here).

Rows (batch 8, 3x224x224, float32), each the minimum of ``--repeat`` runs, the libraries
alternating so that they see the same machine load:

- forward in-process: ``graph.forward(x, backward=False)`` vs ``InferenceSession.run``
  (target <= 1.5x onnxruntime);
- forward + backward in-process: ``graph.forward`` + ``graph.backward`` (grad x and every
  parameter) vs torch autograd on the same model (target <= 1.2x torch);
- each of those two cnncore passes against its GEMM floor (:mod:`benchmarks.gemm_floor`:
  every product the pass calls, same shapes, strides and threads, alone on warm operands,
  timed alternating with the pass; target <= 1.25x: the time outside BLAS is the
  engine's own doing);
- V2 binary infer end to end: ``POST /v2/models/resnet18/infer`` with binary x and out,
  through a real server process (python -m service), against onnxruntime in-process
  plus the echo floor (the same body through a bare ASGI app on the same uvicorn, the
  answer's size back; target <= 1.15x). The server answers plain inference with
  onnxruntime (``CNN_ONNX_RUNTIME=onnxruntime``), as it does by default.

Peak memory: each pass once in a fresh process of its own (``--peak``), the largest
resident set size above the one before the pass, sampled every 2 ms (for V2, the
server process during its first request).

Usage::

    python -m benchmarks.bench_onnx                 # exports ResNet-18 with torch
    python -m benchmarks.bench_onnx --repeat 3 --onnx /tmp/resnet18.onnx
    python -m benchmarks.bench_onnx --threads 1 --clock cpu --no-v2   # a busy machine
    python -m benchmarks.bench_onnx --model mobilenet_v3_large --no-v2   # or efficientnet_b0
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

if __package__ in (None, ""):  # run as a script: make the packages importable from a checkout
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import cnncore
from benchmarks import gemm_floor
from service.runtime import tune_malloc

BATCH, SHAPE = 8, (3, 224, 224)


# --------------------------------------------------------------------------- the model


def resnet18() -> Any:
    """torchvision's ResNet-18 layout, written out (random weights, eval mode)."""
    import torch
    from torch import nn

    class Block(nn.Module):
        def __init__(self, cin: int, cout: int, stride: int) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(cout)
            self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout)
            self.relu = nn.ReLU()
            self.downsample = None
            if stride != 1 or cin != cout:
                self.downsample = nn.Sequential(
                    nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
                )

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.relu(self.bn1(self.conv1(x)))
            y = self.bn2(self.conv2(y))
            return self.relu(y + (x if self.downsample is None else self.downsample(x)))

    class ResNet18(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
            self.bn1 = nn.BatchNorm2d(64)
            self.relu = nn.ReLU()
            self.maxpool = nn.MaxPool2d(3, 2, 1)
            layers, cin = [], 64
            for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
                layers.append(nn.Sequential(Block(cin, cout, stride), Block(cout, cout, 1)))
                cin = cout
            self.layer1, self.layer2, self.layer3, self.layer4 = layers
            self.avgpool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(512, 1000)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
            x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
            return self.fc(torch.flatten(self.avgpool(x), 1))

    return seeded(ResNet18)()


def seeded(make: Callable[[], Any]) -> Callable[[], Any]:
    """``make`` as a builder of a reproducible model in eval mode: seed 0, and running
    BatchNorm statistics away from (0, 1) so that folding them changes the weights."""

    def build() -> Any:
        import torch
        from torch import nn

        torch.manual_seed(0)
        model = make()
        with torch.no_grad():
            for m in model.modules():
                if isinstance(m, nn.BatchNorm2d):
                    assert m.running_mean is not None
                    assert m.running_var is not None
                    m.running_mean.normal_(0, 0.1)
                    m.running_var.uniform_(0.5, 1.5)
        return model.eval()

    return build


def mobile_nets() -> dict[str, Callable[[], Any]]:
    """MobileNetV3-Large and EfficientNet-B0 in torchvision's layout, written out (its
    block tables, squeeze-excitation and heads; random weights, eval mode)."""
    import torch
    from torch import nn

    def cba(cin: int, cout: int, k: int, stride: int, groups: int, act: Any) -> list[nn.Module]:
        layers = [nn.Conv2d(cin, cout, k, stride, (k - 1) // 2, groups=groups, bias=False)]
        return [*layers, nn.BatchNorm2d(cout)] + ([act()] if act is not None else [])

    class SE(nn.Module):
        def __init__(self, c: int, squeeze: int, act: Any, gate: Any) -> None:
            super().__init__()
            self.fc1, self.fc2 = nn.Conv2d(c, squeeze, 1), nn.Conv2d(squeeze, c, 1)
            self.act, self.gate = act(), gate()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            s = nn.functional.adaptive_avg_pool2d(x, 1)
            return x * self.gate(self.fc2(self.act(self.fc1(s))))

    class Block(nn.Module):
        def __init__(
            self, cin: int, k: int, mid: int, cout: int, se: int, act: Any, gate: Any, stride: int
        ) -> None:
            super().__init__()
            layers = cba(cin, mid, 1, 1, 1, act) if mid != cin else []
            layers += cba(mid, mid, k, stride, mid, act)
            layers += [SE(mid, se, nn.ReLU if gate is nn.Hardsigmoid else act, gate)] if se else []
            self.body = nn.Sequential(*layers, *cba(mid, cout, 1, 1, 1, None))
            self.residual = stride == 1 and cin == cout

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + self.body(x) if self.residual else self.body(x)

    def divisible(v: float) -> int:
        return max(8, int(v + 4) // 8 * 8)

    def mobilenet_v3_large() -> nn.Module:
        re, hs = nn.ReLU, nn.Hardswish
        table = [  # in, kernel, expanded, out, SE, activation, stride
            (16, 3, 16, 16, False, re, 1), (16, 3, 64, 24, False, re, 2),
            (24, 3, 72, 24, False, re, 1), (24, 5, 72, 40, True, re, 2),
            (40, 5, 120, 40, True, re, 1), (40, 5, 120, 40, True, re, 1),
            (40, 3, 240, 80, False, hs, 2), (80, 3, 200, 80, False, hs, 1),
            (80, 3, 184, 80, False, hs, 1), (80, 3, 184, 80, False, hs, 1),
            (80, 3, 480, 112, True, hs, 1), (112, 3, 672, 112, True, hs, 1),
            (112, 5, 672, 160, True, hs, 2), (160, 5, 960, 160, True, hs, 1),
            (160, 5, 960, 160, True, hs, 1),
        ]  # fmt: skip
        blocks = [
            Block(i, k, e, o, divisible(e / 4) if se else 0, a, nn.Hardsigmoid, st)
            for i, k, e, o, se, a, st in table
        ]
        return nn.Sequential(
            *cba(3, 16, 3, 2, 1, hs), *blocks, *cba(160, 960, 1, 1, 1, hs),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
            nn.Linear(960, 1280), hs(), nn.Dropout(0.2), nn.Linear(1280, 1000),
        )  # fmt: skip

    def efficientnet_b0() -> nn.Module:
        stages = [  # expand, kernel, stride, in, out, layers
            (1, 3, 1, 32, 16, 1), (6, 3, 2, 16, 24, 2), (6, 5, 2, 24, 40, 2),
            (6, 3, 2, 40, 80, 3), (6, 5, 1, 80, 112, 3), (6, 5, 2, 112, 192, 4),
            (6, 3, 1, 192, 320, 1),
        ]  # fmt: skip
        blocks = []
        for e, k, st, cin, cout, n in stages:
            for j in range(n):
                c = cin if j == 0 else cout
                se = max(1, c // 4)
                blocks.append(
                    Block(c, k, c * e, cout, se, nn.SiLU, nn.Sigmoid, st if j == 0 else 1)
                )
        return nn.Sequential(
            *cba(3, 32, 3, 2, 1, nn.SiLU), *blocks, *cba(320, 1280, 1, 1, 1, nn.SiLU),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2), nn.Linear(1280, 1000),
        )  # fmt: skip

    return {
        "mobilenet_v3_large": seeded(mobilenet_v3_large),
        "efficientnet_b0": seeded(efficientnet_b0),
    }


def build_model(name: str) -> Any:
    """The torch model ``name`` (ImportError without torch)."""
    if name == "resnet18":
        return resnet18()
    return mobile_nets()[name]()


def export(model: Any, path: Path) -> None:
    import warnings

    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (torch.zeros(1, *SHAPE),),
            str(path),
            dynamo=False,
            opset_version=17,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}},
        )


# --------------------------------------------------------------------------- measuring


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
clock = CLOCKS["wall"]


def best_of(
    runs: dict[str, Callable[[], object]], repeat: int, wall: bool = False
) -> dict[str, float]:
    """Minimum seconds of each runner over ``repeat`` rounds; runners alternate each round
    (on :data:`clock`, or on the wall clock with ``wall``)."""
    now = time.perf_counter if wall else clock
    for fn in runs.values():
        fn()  # warm-up: first-call allocations, thread pools, caches
    best = dict.fromkeys(runs, float("inf"))
    for _ in range(repeat):
        for name, fn in runs.items():
            time.sleep(0.2)  # let the other library's worker threads go idle
            t = now()
            fn()
            best[name] = min(best[name], now() - t)
    return best


@contextlib.contextmanager
def peak_rss(pid: int | None = None) -> Iterator[dict[str, int]]:
    """Sample a process's resident set size every 2 ms; yields a dict that gets ``peak``
    (bytes above the size at entry) when the block ends."""
    import psutil

    proc = psutil.Process(pid)
    base = proc.memory_info().rss
    result = {"peak": 0}
    stop = threading.Event()

    def sample() -> None:
        top = base
        while not stop.is_set():
            top = max(top, proc.memory_info().rss)
            stop.wait(0.002)
        result["peak"] = max(top, proc.memory_info().rss) - base

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield result
    finally:
        stop.set()
        thread.join()


def set_threads(threads: int) -> str:
    from threadpoolctl import threadpool_limits

    threadpool_limits(threads)
    with contextlib.suppress(ImportError):
        import torch

        torch.set_num_threads(threads)
    return f"{threads} threads (numpy BLAS, onnxruntime intra-op, torch)"


@dataclass
class Row:
    name: str
    ours: float
    anchor_name: str
    anchor: float
    target: float | None
    ours_mem: int
    anchor_mem: int

    def line(self) -> str:
        ratio = self.ours / self.anchor
        verdict = "report" if self.target is None else ("PASS" if ratio <= self.target else "FAIL")
        target = "-" if self.target is None else f"<= {self.target:g}x"
        return (
            f"| {self.name} | {self.ours * 1e3:.0f} ms | "
            f"{self.anchor_name} {self.anchor * 1e3:.0f} ms | "
            f"{ratio:.2f}x | {target} {verdict} | {self.ours_mem / 2**20:.0f} MiB | "
            f"{f'{self.anchor_mem / 2**20:.0f} MiB' if self.anchor_mem else '-'} |"
        )


# --------------------------------------------------------------------------- the rows


def v2_row(
    onnx_path: Path, ort_run: Callable[[], object], ort_mem: int, repeat: int, threads: int
) -> Row:
    """The end-to-end row: a server process with the model, binary x in and out back,
    against onnxruntime in-process plus the echo floor: the same request body sent to a
    bare ASGI app on the same uvicorn (:func:`benchmarks.bench_wire.echo_app`), answered
    with as many bytes as the V2 response has."""
    import httpx

    from benchmarks.bench_wire import echo_server
    from service.testing import serve_process

    with tempfile.TemporaryDirectory() as repo:
        (Path(repo) / "resnet18").mkdir()
        shutil.copy(onnx_path, Path(repo) / "resnet18" / "model.onnx")
        env = {
            "CNN_MODEL_REPOSITORY": repo,
            "CNN_WORKERS": "1",
            "CNN_MAX_FLOPS": "1e12",  # a batch of 8 is 29 GFLOP forward, above the 2e10 default
            "CNN_ONNX_RUNTIME": "onnxruntime",  # plain inference of ONNX models (contract 7)
            "OPENBLAS_NUM_THREADS": str(threads),
            "OMP_NUM_THREADS": str(threads),
        }
        x = np.random.default_rng(0).standard_normal((BATCH, *SHAPE)).astype(np.float32)
        with (
            serve_process(env=env, timeout=120) as (url, proc),
            echo_server() as (echo_url, _),
            httpx.Client(timeout=600) as client,
        ):
            header = json.dumps(
                {
                    "inputs": [
                        {
                            "name": "x",
                            "datatype": "FP32",
                            "shape": list(x.shape),
                            "parameters": {"binary_data_size": x.nbytes},
                        }
                    ],
                    "outputs": [{"name": "out", "parameters": {"binary_data": True}}],
                }
            ).encode()
            body = header + x.tobytes()
            headers = {
                "Inference-Header-Content-Length": str(len(header)),
                "Content-Type": "application/octet-stream",
            }

            def post() -> int:
                r = client.post(f"{url}/v2/models/resnet18/infer", content=body, headers=headers)
                r.raise_for_status()
                return len(r.content)

            with peak_rss(proc.pid) as mem:  # the first request: nothing to reuse yet
                answer = post()
            echo_headers = {**headers, "X-Echo-Bytes": str(answer)}

            def echo() -> None:
                r = client.post(echo_url, content=body, headers=echo_headers)
                r.raise_for_status()
                assert len(r.content) == answer

            best = best_of(
                {"v2": post, "ort": ort_run, "echo": echo}, repeat, wall=True
            )  # the work is the server's
    return Row(
        "V2 binary infer (served by onnxruntime), end to end",
        best["v2"],
        f"onnxruntime in-process {best['ort'] * 1e3:.0f} ms + echo floor "
        f"{best['echo'] * 1e3:.1f} ms =",
        best["ort"] + best["echo"],
        1.15,
        mem["peak"],
        ort_mem,
    )


def passes(onnx_path: Path, model: Any, threads: int) -> dict[str, Callable[[], object]]:
    """Every pass of the table, ready to run: the model loaded, the arrays made."""
    import onnxruntime as ort

    graph = cnncore.load_onnx(onnx_path)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((BATCH, *SHAPE)).astype(np.float32)
    dout = rng.standard_normal(graph.infer(x.shape).output_shape).astype(np.float32)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1  # as the server's session (service.models.onnx_runtime)
    sess = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
    in_name = sess.get_inputs()[0].name

    def ours_fwd_bwd() -> object:
        _, cache = graph.forward(x)
        return graph.backward(dout, cache)

    runs: dict[str, Callable[[], object]] = {
        "ours_fwd": lambda: graph.forward(x, backward=False),
        "ort_fwd": lambda: sess.run(None, {in_name: x}),
        "ours_fwd_bwd": ours_fwd_bwd,
    }
    if model is not None:
        import torch

        xt, dt = torch.from_numpy(x), torch.from_numpy(dout)

        def torch_fwd_bwd() -> object:
            xg = xt.clone().requires_grad_()
            model.zero_grad(set_to_none=True)
            model(xg).backward(dt)
            return xg.grad

        runs["torch_fwd_bwd"] = torch_fwd_bwd
    return runs


def peak_of(name: str, args: argparse.Namespace, onnx_path: Path) -> int:
    """Peak memory of one pass, in a fresh process (so nothing is reused from earlier runs)."""
    import subprocess

    cmd = [sys.executable, "-m", "benchmarks.bench_onnx", "--peak", name, "--onnx", str(onnx_path)]
    cmd += ["--model", args.model]
    cmd += ["--threads", str(args.threads)] + (["--libc-malloc"] if args.libc_malloc else [])
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return int(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument(
        "--onnx", type=Path, help="an exported ResNet-18 (default: export one with torch)"
    )
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--no-v2", action="store_true", help="skip the end-to-end row")
    parser.add_argument(
        "--libc-malloc",
        action="store_true",
        help="keep glibc's default malloc thresholds (the service raises them at start-up)",
    )
    parser.add_argument(
        "--clock",
        choices=sorted(CLOCKS),
        default="wall",
        help="cpu: this process's CPU time (with --threads 1, on a busy machine; V2 stays wall)",
    )
    parser.add_argument(
        "--model",
        choices=("resnet18", "mobilenet_v3_large", "efficientnet_b0"),
        default="resnet18",
        help="the network (torchvision's layouts written out; random weights)",
    )
    parser.add_argument("--peak", help=argparse.SUPPRESS)  # child process: one pass's peak memory
    args = parser.parse_args(argv)

    try:
        model = build_model(args.model)
    except ImportError:
        model = None
    if args.onnx is None and model is None:
        parser.error("torch is not importable: give --onnx FILE (an exported ResNet-18)")
    tmp = tempfile.TemporaryDirectory()
    onnx_path = args.onnx or Path(tmp.name) / f"{args.model}.onnx"
    if args.onnx is None:
        export(model, onnx_path)
    global clock
    clock = CLOCKS[args.clock]
    threads = set_threads(args.threads)
    if not args.libc_malloc:
        tune_malloc()
    runs = passes(onnx_path, model, args.threads)
    if args.peak:
        with peak_rss() as mem:
            runs[args.peak]()
        print(mem["peak"])
        return 0
    print(threads, f"; {onnx_path.stat().st_size / 1e6:.0f} MB ONNX file")

    rows = []
    mem = {name: peak_of(name, args, onnx_path) for name in runs}
    best = best_of({"ours": runs["ours_fwd"], "ort": runs["ort_fwd"]}, args.repeat)
    rows.append(
        Row(
            "forward, in-process",
            best["ours"],
            "onnxruntime",
            best["ort"],
            1.5,
            mem["ours_fwd"],
            mem["ort_fwd"],
        )
    )
    if "torch_fwd_bwd" in runs:
        best = best_of({"ours": runs["ours_fwd_bwd"], "torch": runs["torch_fwd_bwd"]}, args.repeat)
        rows.append(
            Row(
                "forward + backward, in-process",
                best["ours"],
                "torch autograd",
                best["torch"],
                1.2,
                mem["ours_fwd_bwd"],
                mem["torch_fwd_bwd"],
            )
        )
    for name, label in (("ours_fwd", "forward"), ("ours_fwd_bwd", "forward + backward")):
        # The pass and its products alone, alternating: a slow spell of the machine
        # falls on both, not on one of them.
        calls = gemm_floor.record(runs[name])
        print(f"{label}: {gemm_floor.summary(calls)}")
        best = best_of({"ours": runs[name], "floor": gemm_floor.replayer(calls)}, args.repeat)
        rows.append(
            Row(
                f"{label}, against its GEMM floor",
                best["ours"],
                "its GEMMs alone",
                best["floor"],
                1.25,
                mem[name],
                0,
            )
        )
    if not args.no_v2:
        rows.append(v2_row(onnx_path, runs["ort_fwd"], mem["ort_fwd"], args.repeat, args.threads))

    print(
        f"\n{args.model}, batch {BATCH}, {'x'.join(map(str, SHAPE))}, float32, "
        f"min of {args.repeat}, "
        f"{args.clock} clock, load average {os.getloadavg()[0]:.1f}\n"
    )
    print("| pass | cnncore | anchor | ratio | target | cnncore peak RSS | anchor peak RSS |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        print(row.line())
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
