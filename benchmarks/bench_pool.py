"""The pooling rows of :mod:`benchmarks.bench_core` (kept as a short alias).

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python -m benchmarks.bench_pool [--repeat 30]

is ``python -m benchmarks.bench_core --filter pool``; any other option is passed on.
"""

from __future__ import annotations

import sys

from benchmarks.bench_core import main

if __name__ == "__main__":
    sys.exit(main(["--filter", "pool", *sys.argv[1:]]))
