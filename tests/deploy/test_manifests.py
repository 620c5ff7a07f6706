"""deploy/kubernetes: schema-valid (kubernetes-validate, strict) and consistent with the service.

The checks are the relationships an operator relies on: probes that hit real routes, ports
that line up, a grace period longer than the drain, a memory limit no smaller than the
budget the service's own limits allow, nothing written outside an ``emptyDir``.
"""

from __future__ import annotations

import copy
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import kubernetes_validate
import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import MiB, Settings
from service.testing import free_port, serve_process

from .manifests import JSON_EXPANSION, ROOT, container, documents, memory_budget, one, quantity

K8S = ROOT / "deploy" / "kubernetes"
#: The oldest Kubernetes release still maintained upstream, and the newest the validator knows.
VERSIONS = ("1.32.0", kubernetes_validate.latest_version())


def _manifests() -> list[tuple[Path, dict[str, Any]]]:
    return [
        (path, doc)
        for path in sorted(K8S.rglob("*.yaml"))
        for doc in documents(path)
        if doc["kind"] not in ("Kustomization", "Component", "ServiceMonitor")
        and not path.name.endswith("-patch.yaml")  # partial by design; merged and checked below
    ]


def _k8s(kind: str) -> dict[str, Any]:
    return one(K8S, kind)


def _pod_env(deployment: dict[str, Any]) -> dict[str, Any]:
    """The container's environment: the ConfigMap's values, then ``env`` (which wins)."""
    spec = container(deployment)
    env: dict[str, Any] = {}
    for source in spec.get("envFrom", []):
        name = source["configMapRef"]["name"]
        (config,) = [d for _, d in _manifests() if d["kind"] == "ConfigMap"]
        assert config["metadata"]["name"] == name
        env.update(config["data"])
    for var in spec["env"]:
        env[var["name"]] = var.get("value", var.get("valueFrom"))
    return env


def _resolved_env(deployment: dict[str, Any]) -> dict[str, str]:
    """The environment as the kubelet would fill it: CPU ``resourceFieldRef``s rounded up."""
    limits = container(deployment)["resources"]["limits"]
    resolved = {}
    for name, value in _pod_env(deployment).items():
        if isinstance(value, dict):
            ref = value["resourceFieldRef"]
            assert ref["resource"] == "limits.cpu", name
            value = str(math.ceil(quantity(limits["cpu"]) / quantity(ref.get("divisor", "1"))))
        resolved[name] = value
    return resolved


def _settings(deployment: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> Settings:
    for name, value in _resolved_env(deployment).items():
        monkeypatch.setenv(name, value)
    return Settings()


def _merge_patch(base: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """Kustomize's strategic merge for what the model-repository component patches: maps
    merge, lists of named items (containers, env, volumes, volumeMounts) merge by name."""
    merged = copy.deepcopy(base)
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge_patch(merged[key], value)
        elif isinstance(value, list) and isinstance(merged.get(key), list):
            by_name = {item["name"]: item for item in merged[key]}
            for item in value:
                if item["name"] in by_name:
                    by_name[item["name"]].update(_merge_patch(by_name[item["name"]], item))
                else:
                    merged[key].append(copy.deepcopy(item))
        else:
            merged[key] = copy.deepcopy(value)
    return merged


# --------------------------------------------------------------------------- schemas


@pytest.mark.parametrize("version", VERSIONS)
def test_every_manifest_is_valid_against_the_kubernetes_schemas_in_strict_mode(
    version: str,
) -> None:
    manifests = _manifests()
    kinds = {doc["kind"] for _, doc in manifests}
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget"} <= kinds
    for path, doc in manifests:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{path.relative_to(ROOT)} ({doc['kind']}): {exc.message}")


def test_strict_validation_would_catch_a_misspelled_field() -> None:
    deployment = copy.deepcopy(_k8s("Deployment"))
    container(deployment)["readinessprobe"] = container(deployment).pop("readinessProbe")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, VERSIONS[-1], strict=True)


def test_the_kustomization_lists_every_manifest_and_the_component_exists() -> None:
    (kustomization,) = documents(K8S / "kustomization.yaml")
    listed = set(kustomization["resources"])
    top_level = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    # The ServiceMonitor needs the Prometheus Operator's CRD: applied separately.
    assert listed == top_level - {"servicemonitor.yaml"}
    assert "components/model-repository" in (K8S / "kustomization.yaml").read_text()
    (component,) = documents(K8S / "components/model-repository/kustomization.yaml")
    assert component["kind"] == "Component"
    for name in [*component["resources"], *(p["path"] for p in component["patches"])]:
        assert (K8S / "components/model-repository" / name).is_file(), name


# --------------------------------------------------------------------------- relationships


def test_replicas_scale_and_disruptions_keep_one_serving() -> None:
    deployment, hpa, pdb = (
        _k8s("Deployment"),
        _k8s("HorizontalPodAutoscaler"),
        _k8s("PodDisruptionBudget"),
    )
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["replicas"] >= 2
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    assert hpa["spec"]["minReplicas"] >= 2
    assert [m["resource"]["name"] for m in hpa["spec"]["metrics"]] == ["cpu"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert pdb["spec"]["maxUnavailable"] < hpa["spec"]["minReplicas"]


def test_ports_line_up_from_the_service_to_the_process() -> None:
    deployment, service = _k8s("Deployment"), _k8s("Service")
    spec = container(deployment)
    port, grpc_port = spec["ports"]
    env = _resolved_env(deployment)
    assert int(env["CNN_PORT"]) == port["containerPort"]
    assert int(env["CNN_GRPC_PORT"]) == grpc_port["containerPort"]
    assert env["CNN_HOST"] == "0.0.0.0"  # reachable from the Service, not only the loopback
    assert (
        service["spec"]["selector"].items()
        <= deployment["spec"]["template"]["metadata"]["labels"].items()
    )
    assert [p["targetPort"] for p in service["spec"]["ports"]] == [port["name"], grpc_port["name"]]
    assert service["spec"]["ports"][1]["appProtocol"] == "grpc"
    for probe in ("startupProbe", "readinessProbe"):
        assert spec[probe]["httpGet"]["port"] in (port["name"], port["containerPort"]), probe
    # Kubernetes' gRPC probe calls grpc.health.v1.Health on the gRPC port.
    assert spec["livenessProbe"]["grpc"]["port"] == grpc_port["containerPort"]
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == port["containerPort"]
    monitor = one(K8S, "ServiceMonitor")
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    assert [e["port"] for e in monitor["spec"]["endpoints"]] == [
        service["spec"]["ports"][0]["name"]
    ]
    assert {e["path"] for e in monitor["spec"]["endpoints"]} == {annotations["prometheus.io/path"]}


def test_probes_and_the_scrape_path_are_routes_of_the_app() -> None:
    deployment = _k8s("Deployment")
    spec = container(deployment)
    assert spec["startupProbe"]["httpGet"]["path"] == "/health/live"
    assert spec["readinessProbe"]["httpGet"]["path"] == "/health/ready"
    assert "service" not in spec["livenessProbe"]["grpc"]  # the whole server's health
    paths = [spec[p]["httpGet"]["path"] for p in ("startupProbe", "readinessProbe")]
    paths.append(deployment["spec"]["template"]["metadata"]["annotations"]["prometheus.io/path"])
    # With API keys configured, as in the pods: the probes and the scrape need none.
    client = TestClient(create_app(Settings(api_keys="some-key")))  # type: ignore[arg-type]
    for path in paths:
        assert client.get(path).status_code == 200, path


def test_the_grace_period_covers_the_shutdown_delay_and_the_drain(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    deployment = _k8s("Deployment")
    settings = _settings(deployment, monkeypatch)
    assert settings.shutdown_delay > 0  # endpoints stop routing here before the listener closes
    grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace >= settings.shutdown_delay + settings.graceful_timeout


def test_the_memory_limit_covers_the_budget_of_the_service_limits(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    deployment = _k8s("Deployment")
    settings = _settings(deployment, monkeypatch)
    resources = container(deployment)["resources"]
    base = quantity(
        deployment["spec"]["template"]["metadata"]["annotations"]["cnn-service/memory-base"]
    )
    budget = memory_budget(settings, base)
    assert quantity(resources["limits"]["memory"]) >= budget, f"budget {budget / MiB:.0f} MiB"
    assert quantity(resources["requests"]["memory"]) == quantity(resources["limits"]["memory"])
    # The comment in deployment.yaml shows the sum: keep it true.
    assert f"= {budget / MiB:.0f} MiB" in (K8S / "deployment.yaml").read_text()


def test_blas_threads_and_computations_follow_the_cpu_limit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    deployment = _k8s("Deployment")
    env = _resolved_env(deployment)
    cpus = math.ceil(quantity(container(deployment)["resources"]["limits"]["cpu"]))
    for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "CNN_MAX_CONCURRENCY"):
        assert int(env[name]) == cpus, name
    assert _settings(deployment, monkeypatch).max_concurrency == cpus


def test_the_pod_runs_unprivileged_on_a_read_only_root() -> None:
    deployment = _k8s("Deployment")
    pod = deployment["spec"]["template"]["spec"]
    spec = container(deployment)
    security = spec["securityContext"]
    assert pod["securityContext"]["runAsNonRoot"]
    assert security["runAsNonRoot"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    assert pod["automountServiceAccountToken"] is False
    # The same user as the image's USER line.
    dockerfile = (ROOT / "Dockerfile").read_text()
    (user,) = re.findall(r"^USER (\S+)", dockerfile, flags=re.MULTILINE)
    assert user.split(":")[0] == str(pod["securityContext"]["runAsUser"])
    # Everything the service writes (TMPDIR: several workers' metrics files) is an emptyDir.
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in spec["volumeMounts"]}
    assert "emptyDir" in volumes[mounts[_resolved_env(deployment)["TMPDIR"]]]


def test_api_keys_come_from_a_mounted_secret() -> None:
    deployment = _k8s("Deployment")
    pod = deployment["spec"]["template"]["spec"]
    keys_file = Path(_resolved_env(deployment)["CNN_API_KEYS_FILE"])
    (mount,) = [
        m for m in container(deployment)["volumeMounts"] if m["mountPath"] == str(keys_file.parent)
    ]
    assert mount["readOnly"] is True
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    assert [item["path"] for item in volume["secret"]["items"]] == [keys_file.name]
    # Secret files belong to root and to the pod's fsGroup: the service's user must read it.
    mode = volume["secret"]["defaultMode"]
    security = pod["securityContext"]
    in_group = security.get("fsGroup") in (
        security["runAsGroup"],
        *security.get("supplementalGroups", []),
    )
    assert mode & 0o004 or (in_group and mode & 0o040), f"mode {mode:o} unreadable by the user"
    assert "CNN_API_KEYS" not in _pod_env(deployment)  # never a key in the manifest itself


def test_the_model_repository_component_mounts_a_claim_read_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    folder = K8S / "components/model-repository"
    (patch,) = documents(folder / "deployment-patch.yaml")
    (claim,) = documents(folder / "pvc.yaml")
    deployment = _merge_patch(_k8s("Deployment"), patch)
    for version in VERSIONS:
        kubernetes_validate.validate(deployment, version, strict=True)
    env = _resolved_env(deployment)
    (mount,) = [m for m in container(deployment)["volumeMounts"] if m["name"] == "models"]
    assert mount["readOnly"] is True
    assert env["CNN_MODEL_REPOSITORY"] == mount["mountPath"]
    (volume,) = [
        v for v in deployment["spec"]["template"]["spec"]["volumes"] if v["name"] == "models"
    ]
    assert volume["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
    assert "ReadOnlyMany" in claim["spec"]["accessModes"]
    # Without the component the bundled models serve: the base sets no repository.
    assert "CNN_MODEL_REPOSITORY" not in _resolved_env(_k8s("Deployment"))
    assert _settings(deployment, monkeypatch).model_repository == Path("/models")


# --------------------------------------------------------------------------- the real process


def _unprivileged() -> list[str]:
    """A command prefix that runs as ``nobody`` with no supplementary groups.

    It keeps one capability, CAP_DAC_READ_SEARCH: read and traverse anything, write nothing
    (writing needs CAP_DAC_OVERRIDE). The interpreter may live in a folder only root can
    enter (pyenv under /root); every write is still checked against nobody's permissions.
    """
    if os.geteuid() != 0:
        pytest.skip("switching to an unprivileged user needs root (run the tests as root in CI)")
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("setpriv (util-linux) is not installed")
    caps = ["--inh-caps=+dac_read_search", "--ambient-caps=+dac_read_search"]
    return [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", *caps, "--"]


def _cannot_write(prefix: list[str], folder: Path) -> bool:
    probe = f"open({str(folder / '.cnn-write-probe')!r}, 'w')"
    done = subprocess.run([*prefix, sys.executable, "-c", probe], capture_output=True, check=False)
    return done.returncode != 0 and b"PermissionError" in done.stderr


@pytest.mark.slow
def test_the_service_runs_as_nobody_with_its_package_and_home_read_only(
    request: pytest.FixtureRequest,
) -> None:
    """As in the pod: not root, nothing writable but TMPDIR (the pod's emptyDir), two
    workers (their metrics go through files under TMPDIR), the ConfigMap's limits and an
    API key file; the idle footprint stays within the base the memory budget assumes."""
    psutil = pytest.importorskip("psutil")
    prefix = _unprivileged()
    package = Path(sys.modules["service"].__file__ or "").parent
    # Not pytest's tmp_path: its parent is private to root, and nobody must reach these.
    tmp_path = Path(tempfile.mkdtemp(prefix="cnn-service-ro-"))
    request.addfinalizer(lambda: shutil.rmtree(tmp_path, ignore_errors=True))
    home = tmp_path / "home"
    home.mkdir(mode=0o555)
    scratch = tmp_path / "emptydir"
    scratch.mkdir()
    scratch.chmod(0o777)  # not through mkdir's mode, which the umask trims
    keys = tmp_path / "api-keys"
    keys.write_text("pod-key\n")
    keys.chmod(0o444)
    tmp_path.chmod(0o755)
    for folder in (package, home, Path(sys.prefix), Path.cwd()):
        assert _cannot_write(prefix, folder), f"{folder} is writable by nobody: not a fair test"
    deployment = _k8s("Deployment")
    env = {
        **_resolved_env(deployment),
        "CNN_HOST": "127.0.0.1",
        "CNN_WORKERS": "2",
        "CNN_API_KEYS_FILE": str(keys),
        "HOME": str(home),
        "TMPDIR": str(scratch),
        "CNN_SHUTDOWN_DELAY": "0",  # the pod's 10 s would only slow the test's exit
        "PYTHONDONTWRITEBYTECODE": "",  # let it try to write bytecode: it must not matter
    }
    port = free_port()
    env["CNN_PORT"] = str(port)
    argv = [*prefix, sys.executable, "-m", "service"]
    with serve_process(argv, port=port, env=env, timeout=60) as (base_url, proc):
        auth = {"Authorization": "Bearer pod-key"}
        body = {"x": [[1.0, 2.0]], "w": [[1.0], [1.0]]}
        for _ in range(4):  # reach both workers
            r = httpx.post(f"{base_url}/v1/linear/forward", json=body, headers=auth, timeout=30)
            assert r.status_code == 200
            assert r.json()["out"] == [[3.0]]
        metrics = httpx.get(f"{base_url}/metrics", timeout=10).text
        assert 'route="/v1/linear/forward",status="200"' in metrics
        assert any(scratch.iterdir())  # the workers' metrics directory lives in the emptyDir
        time.sleep(1)
        workers = [p for p in psutil.Process(proc.pid).children(recursive=True) if p.is_running()]
        base = quantity(
            deployment["spec"]["template"]["metadata"]["annotations"]["cnn-service/memory-base"]
        )
        for worker in workers:
            assert worker.uids().effective == 65534
            assert worker.memory_info().rss <= base, (
                f"idle worker RSS {worker.memory_info().rss / MiB:.0f} MiB"
            )


@pytest.mark.slow
def test_a_worst_case_body_stays_within_the_parsing_factor_of_the_budget() -> None:
    """The budget's JSON_EXPANSION, measured: a body of CNN_MAX_BODY_BYTES made of nested
    lists (the costliest JSON per byte) against a replica with the pod's limits."""
    psutil = pytest.importorskip("psutil")
    env = _resolved_env(_k8s("Deployment"))
    env.update(CNN_HOST="127.0.0.1", CNN_SHUTDOWN_DELAY="0")
    del env["CNN_API_KEYS_FILE"]  # the pod's Secret; keys play no part here
    limit = int(env["CNN_MAX_BODY_BYTES"])
    unit = "[" * 200 + "]" * 200
    count = (limit - 64) // (len(unit) + 1)
    body = ('{"x": [' + ",".join([unit] * count) + '], "w": [[1.0]]}').encode()
    assert limit - 1000 < len(body) <= limit
    port = free_port()
    env["CNN_PORT"] = str(port)
    with serve_process(env=env, port=port, timeout=60) as (base_url, proc):
        process = psutil.Process(proc.pid)
        before = process.memory_info().rss
        peak = before
        done = threading.Event()

        def sample() -> None:
            nonlocal peak
            while not done.is_set():
                peak = max(peak, process.memory_info().rss)
                time.sleep(0.001)

        sampler = threading.Thread(target=sample)
        sampler.start()
        try:
            r = httpx.post(
                f"{base_url}/v1/linear/forward",
                content=body,
                headers={"content-type": "application/json"},
                timeout=120,
            )
        finally:
            time.sleep(0.2)
            done.set()
            sampler.join()
    assert r.status_code == 422  # not a tensor; what matters is what parsing it held
    growth = (peak - before) / len(body)
    assert growth <= JSON_EXPANSION, f"{growth:.1f} bytes held per body byte"
