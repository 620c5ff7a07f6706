"""Calls through tritonclient, Triton's own Python client (a real client no one here wrote).

``tritonclient.grpc`` runs in a process of its own (:file:`grpc_tritonclient.py`): its
generated ``inference`` messages and the service's cannot share one process ("duplicate
symbol" in protobuf's default pool, as KServe and MLServer note). ``tritonclient.http``
has no generated messages and runs here.
"""

from __future__ import annotations

import gc
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
DATATYPES = {np.float32: "FP32", np.float64: "FP64", np.int64: "INT64"}


def tritonclient(address: str, calls: list[dict[str, Any]], tmp_path: Path, **arrays: Any) -> Any:
    """Run ``calls`` with tritonclient.grpc in a fresh process; results and arrays back."""
    (tmp_path / "calls.json").write_text(json.dumps(calls))
    np.savez(tmp_path / "in.npz", **arrays)
    script = HERE / "grpc_tritonclient.py"
    args = [str(tmp_path / name) for name in ("calls.json", "in.npz", "out.npz")]
    done = subprocess.run(
        [sys.executable, str(script), address, *args], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    out = np.load(tmp_path / "out.npz")
    return json.loads(str(out["results"])), {k: out[k] for k in out.files if k != "results"}


def rest_infer(url: str, model: str, inputs: dict[str, np.ndarray], outputs: list[str]) -> Any:
    """One V2 infer with tritonclient.http, binary tensors both ways; ``{output: array}``."""
    from tritonclient import http

    client = http.InferenceServerClient(url.removeprefix("http://"))
    tensors = []
    for name, arr in inputs.items():
        t = http.InferInput(name, list(arr.shape), DATATYPES[arr.dtype.type])
        t.set_data_from_numpy(arr, binary_data=True)
        tensors.append(t)
    wanted = [http.InferRequestedOutput(n, binary_data=True) for n in outputs]
    result = client.infer(model, tensors, outputs=wanted)
    answer = {n: result.as_numpy(n) for n in outputs}
    client.close()
    del client, result  # __del__ joins its gevent pool again: here, not on another thread
    gc.collect()
    return answer
