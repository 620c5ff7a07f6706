"""benchmarks/gemm_floor.py records every product of a pass as it ran (shapes, strides,
dtypes, threads) and replays the same layouts; timings themselves are not tested."""

from __future__ import annotations

import math

import numpy as np

import cnncore
import cnncore.threads
from benchmarks.gemm_floor import Layout, floor, record, replayer
from cnncore.network import Conv2d, FlattenSpec, Linear, ReluSpec


def test_records_layouts_outputs_and_threads(rng: np.random.Generator) -> None:
    a = rng.standard_normal((3, 4, 5)).astype(np.float32)
    b = rng.standard_normal((6, 5))
    out = np.empty((3, 6, 4), np.float32).swapaxes(-1, -2)  # a strided output

    def run() -> None:
        np.matmul(a, b.T.astype(np.float32), out=out)
        cnncore.threads.map_threads(lambda m: np.matmul(m, m.T), [b, b], 2)

    calls = record(run)
    first = calls[0]
    assert (first.a.shape, first.a.strides, first.a.dtype) == (a.shape, a.strides, a.dtype)
    assert first.out == Layout.of(out)
    assert first.section is None
    assert first.flops == 2 * 3 * 4 * 5 * 6
    assert len(calls) == 3
    assert {c.b.strides for c in calls[1:]} == {b.T.strides}
    assert all(c.flops == 2 * 6 * 5 * 6 for c in calls[1:])
    assert {c.section for c in calls[1:]} == {0}  # one map_threads section
    seconds = floor(calls, repeat=1)
    assert math.isfinite(seconds)
    assert seconds > 0


def test_fresh_operands_keep_the_strides(rng: np.random.Generator) -> None:
    base = rng.standard_normal((2, 8, 9))
    for view in (base, base.swapaxes(-1, -2), base[:, 1:7:2, ::3], base[0]):
        fresh = Layout.of(view).fresh()
        assert (fresh.shape, fresh.strides, fresh.dtype) == (view.shape, view.strides, view.dtype)


def test_a_graph_pass_is_recorded(rng: np.random.Generator) -> None:
    """Every product of a network goes through np.matmul (linear layers included)."""
    w = rng.standard_normal((4, 1, 3, 3))
    fc = rng.standard_normal((4 * 6 * 6, 3))
    x = rng.standard_normal((2, 1, 8, 8))
    layers = [Conv2d(w), ReluSpec(), FlattenSpec(), Linear(fc)]
    calls = record(lambda: cnncore.network_forward(x, layers))
    shapes = {(c.a.shape[-2:], c.b.shape[-2:]) for c in calls}
    assert ((2, 144), (144, 3)) in shapes  # the linear layer
    assert len(calls) >= 2


def test_the_replay_makes_the_same_products(rng: np.random.Generator) -> None:
    """What bench_onnx times against the pass: the same layouts, the same sections."""
    a = rng.standard_normal((3, 4, 5)).astype(np.float32)
    b = rng.standard_normal((6, 5))

    def run() -> None:
        np.matmul(a, a.swapaxes(-1, -2))
        cnncore.threads.map_threads(lambda m: np.matmul(m, m.T), [b, b], 2)

    calls = record(run)
    again = record(replayer(calls))
    assert [(c.a, c.b, c.out) for c in again] == [(c.a, c.b, c.out) for c in calls]
    # The section's products on threads of their own, the first on the calling thread.
    assert len({c.thread for c in again[1:]}) == len({c.thread for c in calls[1:]})
    assert again[0].thread == calls[0].thread
