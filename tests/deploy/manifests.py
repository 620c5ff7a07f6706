"""Reading the deploy/ manifests: YAML documents, one resource by kind, the main container."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

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
