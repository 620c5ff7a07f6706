"""benchmarks/gemm_orientation.py groups a pass's products by shape, counting batched
ones per matrix, and times each both ways; timings themselves are not tested."""

from __future__ import annotations

import numpy as np

from benchmarks.gemm_floor import record
from benchmarks.gemm_orientation import orientations


def test_every_product_is_counted_once_per_matrix(rng: np.random.Generator) -> None:
    a, b = rng.standard_normal((5, 7)), rng.standard_normal((7, 3))
    stack = rng.standard_normal((4, 5, 7))

    def run() -> None:
        np.matmul(a, b)
        np.matmul(a, b)
        np.matmul(stack, b)  # four (5, 7) @ (7, 3) products
        np.matmul(b.T, a.T)

    rows = orientations(record(run), threads=1, repeat=1)
    counts = {(r.m, r.k, r.n): r.count for r in rows}
    assert counts == {(5, 7, 3): 6, (3, 7, 5): 1}
    assert all(r.single_blas for r in rows)  # one thread asked for
    assert all(r.used > 0 and r.transposed > 0 for r in rows)
