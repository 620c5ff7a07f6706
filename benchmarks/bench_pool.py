"""Pooling benchmark: the vectorised ops against the plain loops and PyTorch (CPU).

Times forward + backward, float64, best of ``--repeat`` runs (the reference once),
and prints one table row per case: fast ms, reference ms, torch ms, fast/torch
ratio, and the peak memory numpy allocates during one fast forward + backward.
torch is optional (benchmark-only, never a dependency); its thread count is set to
numpy's BLAS thread count. Run as (OpenBLAS tuning variables unset)::

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python -m benchmarks.bench_pool
"""

from __future__ import annotations

import argparse
import time
import tracemalloc
from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np
from threadpoolctl import threadpool_info

from cnncore import pool2d_backward, pool2d_forward, reference

# (name, input shape, kernel, stride, mode)
CASES = [
    ("max 2x2/2", (100, 3, 32, 32), 2, 2, "max"),
    ("max 3x3/2", (32, 64, 56, 56), 3, 2, "max"),
    ("avg 2x2/2", (32, 64, 56, 56), 2, 2, "avg"),
]


def best_ms(fn: Callable[[], Any], repeat: int) -> float:
    fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * min(times)


def fast(x: np.ndarray, k: int, s: int, mode: str) -> np.ndarray:
    out, cache = pool2d_forward(x, kernel_size=k, stride=s, mode=mode)
    return pool2d_backward(np.ones_like(out), cache)


def naive(x: np.ndarray, k: int, s: int, mode: str) -> np.ndarray:
    forward = getattr(reference, f"{mode}_pool_forward_naive")
    backward = getattr(reference, f"{mode}_pool_backward_naive")
    out, cache = forward(x, {"pool_height": k, "pool_width": k, "stride": s})
    return backward(np.ones_like(out), cache)


def torch_fn(x: np.ndarray, k: int, s: int, mode: str) -> Callable[[], Any] | None:
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(blas_threads())
    xt = torch.from_numpy(x).requires_grad_()
    pool = torch.nn.functional.max_pool2d if mode == "max" else torch.nn.functional.avg_pool2d

    def run() -> None:
        xt.grad = None
        out = pool(xt, k, s)
        out.backward(torch.ones_like(out))

    return run


def blas_threads() -> int:
    return max([p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"] or [1])


def peak_mb(fn: Callable[[], Any]) -> float:
    tracemalloc.start()
    fn()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--no-reference", action="store_true", help="skip the slow loops")
    args = parser.parse_args()
    print(f"numpy {np.__version__}, BLAS threads {blas_threads()}, float64, forward + backward")
    header = (
        f"{'case':<12} {'input':<18} {'fast ms':>9} {'ref ms':>9} {'torch ms':>9} "
        f"{'ratio':>6} {'peak MB':>8}"
    )
    print(header)
    print("-" * len(header))
    rng = np.random.default_rng(0)
    for name, shape, k, s, mode in CASES:
        x = rng.standard_normal(shape)
        run_fast = partial(fast, x, k, s, mode)
        t_fast = best_ms(run_fast, args.repeat)
        t_ref = float("nan") if args.no_reference else best_ms(partial(naive, x, k, s, mode), 1)
        run_torch = torch_fn(x, k, s, mode)
        t_torch = best_ms(run_torch, args.repeat) if run_torch else float("nan")
        mem = peak_mb(run_fast)
        print(
            f"{name:<12} {'x'.join(map(str, shape)):<18} {t_fast:9.1f} {t_ref:9.1f} "
            f"{t_torch:9.1f} {t_fast / t_torch:6.2f} {mem:8.1f}"
        )


if __name__ == "__main__":
    main()
