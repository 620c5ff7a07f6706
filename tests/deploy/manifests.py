"""Reading the deploy/ manifests: YAML documents, one resource by kind, the main container."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from service.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def documents(path: Path) -> list[dict[str, Any]]:
    """Every YAML document of ``path`` (empty ones skipped)."""
    with path.open() as f:
        return [doc for doc in yaml.safe_load_all(f) if doc]


def one(folder: Path, kind: str) -> dict[str, Any]:
    """The only resource of ``kind`` directly in ``folder`` (its sub-folders are overlays)."""
    found = [doc for path in sorted(folder.glob("*.yaml")) for doc in documents(path)]
    (resource,) = [doc for doc in found if doc["kind"] == kind]
    return resource


def container(workload: dict[str, Any]) -> dict[str, Any]:
    """The first container of a Deployment's pod template or a ServingRuntime."""
    spec = workload["spec"]
    containers = (
        spec["template"]["spec"]["containers"] if "template" in spec else spec["containers"]
    )
    first: dict[str, Any] = containers[0]
    return first


#: Bytes held per byte of an admitted JSON body (see the budget in deploy/kubernetes/
#: deployment.yaml): nested lists cost most, each 2-byte "[]" a Python list of 56 bytes plus
#: a 16-byte GC header and an 8-byte slot in its parent (40x), and validation holds more:
#: 51x measured (test_manifests.py checks it); 64 leaves a quarter for the allocator's slack.
JSON_EXPANSION = 64

_UNITS = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "k": 10**3, "M": 10**6, "G": 10**9, "": 1}


def quantity(text: str) -> float:
    """A Kubernetes quantity (``1536Mi``, ``500m``, ``2``) as a number (bytes or cores)."""
    match = re.fullmatch(r"([0-9.]+)(m|Ki|Mi|Gi|k|M|G|)", str(text))
    assert match, f"unsupported quantity {text!r}"
    number, unit = float(match[1]), match[2]
    return number / 1000 if unit == "m" else number * _UNITS[unit]


def memory_budget(settings: Settings, base: float) -> float:
    """Bytes one process (all its workers) may hold under ``settings``: the computations
    running, the bodies admitted and being parsed, the models, and ``base`` per worker."""
    per_worker = (
        settings.max_concurrency * settings.max_request_bytes
        + (settings.max_concurrency + settings.queue_size)
        * settings.max_body_bytes
        * JSON_EXPANSION
        + settings.max_model_bytes
        + base
    )
    return settings.workers * per_worker
