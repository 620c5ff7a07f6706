"""``tritonclient.grpc`` calls, run in a process of their own.

tritonclient's generated ``inference`` messages and the service's own cannot be imported
into one process ("duplicate symbol" in protobuf's default pool, as KServe and MLServer
note), so :func:`tests.triton.tritonclient` runs this script with a JSON list of calls and reads
back what each returned: ``python grpc_tritonclient.py URL CALLS.json IN.npz OUT.npz``.

Each call is ``{"op": ..., ...}``; its result is stored under its index in the output's
``results.json`` member (a JSON document) and, for arrays, as ``<index>/<output name>``.
A call that fails stores ``{"error": <status code name>, "message": ...}``.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException


def run(client: Any, call: dict[str, Any], arrays: Any) -> tuple[Any, dict[str, np.ndarray]]:
    op = call["op"]
    headers = call.get("headers")
    if op == "live":
        return client.is_server_live(headers=headers), {}
    if op == "ready":
        return client.is_server_ready(headers=headers), {}
    if op == "model_ready":
        return client.is_model_ready(call["model"], headers=headers), {}
    if op == "server_metadata":
        return client.get_server_metadata(headers=headers, as_json=True), {}
    if op == "model_metadata":
        return client.get_model_metadata(call["model"], headers=headers, as_json=True), {}
    if op == "index":
        return client.get_model_repository_index(headers=headers, as_json=True), {}
    if op == "load":
        client.load_model(call["model"], headers=headers)
        return None, {}
    if op == "unload":
        client.unload_model(call["model"], headers=headers)
        return None, {}
    if op == "infer":
        inputs = []
        for name, key, datatype in call["inputs"]:
            arr = arrays[key]
            tensor = grpcclient.InferInput(name, list(arr.shape), datatype)
            tensor.set_data_from_numpy(arr)
            inputs.append(tensor)
        outputs = [grpcclient.InferRequestedOutput(n) for n in call.get("outputs", [])]
        result = client.infer(call["model"], inputs, outputs=outputs or None, headers=headers)
        names = [o.name for o in result.get_response().outputs]  # grad/* expanded
        return None, {n: result.as_numpy(n) for n in names}
    raise ValueError(f"unknown op {op!r}")


def main(url: str, calls_path: str, in_path: str, out_path: str) -> int:
    with open(calls_path) as f:
        calls = json.load(f)
    arrays = np.load(in_path)
    options = [("grpc.max_receive_message_length", -1)]  # answers over 4 MiB
    client = grpcclient.InferenceServerClient(url, channel_args=options)
    results: list[Any] = []
    stored: dict[str, np.ndarray] = {}
    for i, call in enumerate(calls):
        try:
            value, outs = run(client, call, arrays)
        except InferenceServerException as exc:
            code = exc.status() or ""
            results.append({"error": code.removeprefix("StatusCode."), "message": exc.message()})
            continue
        results.append(value)
        stored.update({f"{i}/{name}": arr for name, arr in outs.items()})
    np.savez(out_path, results=np.array(json.dumps(results)), **stored)
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:5]))
