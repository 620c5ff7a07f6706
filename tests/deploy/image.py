"""The Dockerfile built with buildah and its command run, without a Docker engine or registry.

- **Base.** ``python:3.11-slim`` cannot be pulled here, so :func:`standin_base` makes a
  stand-in from Debian's packages (mmdebstrap: Python 3.11, pip, CA certificates; no docs,
  man pages or locales, and without Debian's ``EXTERNALLY-MANAGED`` marker, which the real
  image does not have either) and commits it to the local store; the Dockerfile's
  ``BASE`` build argument names it.
- **Build.** ``buildah bud --isolation chroot --format docker`` (the Docker format keeps
  ``HEALTHCHECK``). pip inside the RUN steps gets this machine's pip settings: one
  ``pip.conf`` merged from ``pip config list`` (files and ``PIP_*`` variables), mounted
  read-only with every local path it names (certificates, constraints, wheel folders).
- **Run.** :func:`network_namespace` makes a namespace joined to this host by a veth pair
  on a private /30, and ``buildah run --isolation chroot`` inside it runs the image's own
  ``CMD`` unchanged: the server listens on all of the namespace's interfaces, which only
  this host can reach (servers here listen on loopback only).

Run by hand: ``python -m tests.deploy.image`` builds the image and prints its tag and size.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
BASE_TAG = "localhost/cnn-service-ci/python:3.11-slim-bookworm"
IMAGE_TAG = "localhost/cnn-service:ci"
#: What the stand-in holds, as python:3.11-slim does (plus python-is-python3 for ``python``).
BASE_PACKAGES = ("python3", "python3-pip", "python-is-python3", "ca-certificates")
TOOLS = ("buildah", "mmdebstrap", "ip")


def missing() -> str | None:
    """Why the image cannot be built and run here, or ``None`` when it can."""
    absent = [t for t in TOOLS if shutil.which(t) is None and not Path("/usr/sbin", t).exists()]
    if absent:
        packages = "buildah mmdebstrap iproute2"
        return f"{', '.join(absent)} not installed (Debian: apt-get install {packages})"
    if os.geteuid() != 0:
        return "needs root: buildah's chroot isolation and a network namespace for the container"
    return None


def _run(argv: Sequence[str], timeout: float = 900, **kwargs: Any) -> str:
    done = subprocess.run(
        list(argv), capture_output=True, text=True, timeout=timeout, check=False, **kwargs
    )
    if done.returncode != 0:
        output = (done.stdout + done.stderr)[-4000:]
        raise RuntimeError(f"{' '.join(argv[:4])} ... exited {done.returncode}:\n{output}")
    return done.stdout


def image_exists(tag: str) -> bool:
    return (
        subprocess.run(
            ["buildah", "inspect", "--type", "image", tag], capture_output=True, check=False
        ).returncode
        == 0
    )


def standin_base(tag: str = BASE_TAG, suite: str = "bookworm") -> str:
    """The stand-in for ``python:3.11-slim`` in the local store (made once, then reused)."""
    if image_exists(tag):
        return tag
    with tempfile.TemporaryDirectory() as tmp:
        rootfs = Path(tmp) / "rootfs.tar"
        _run(
            [
                "mmdebstrap",
                "--quiet",
                "--variant=minbase",
                "--hook-dir=/usr/share/mmdebstrap/hooks/merged-usr",  # no usrmerge (and perl)
                *(f"--dpkgopt=path-exclude=/usr/share/{d}/*" for d in ("doc", "man", "locale")),
                f"--include={','.join(BASE_PACKAGES)}",
                '--customize-hook=rm -f "$1"/usr/lib/python3*/EXTERNALLY-MANAGED',
                suite,
                str(rootfs),
            ]
        )
        container = _run(["buildah", "from", "scratch"]).strip()
        try:
            _run(["buildah", "add", container, str(rootfs), "/"])
            _run(["buildah", "config", "--env", "LANG=C.UTF-8", "--cmd", "python3", container])
            _run(["buildah", "commit", "--quiet", "--format", "docker", container, tag])
        finally:
            subprocess.run(["buildah", "rm", container], capture_output=True, check=False)
    return tag


def pip_settings(folder: Path) -> list[str]:
    """``--volume`` arguments that give pip in the build this machine's settings."""
    listed = subprocess.run(
        [sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True, check=False
    ).stdout
    settings: dict[tuple[str, str], str] = {}
    from_env: set[tuple[str, str]] = set()
    for line in listed.splitlines():
        name, sep, value = line.partition("=")
        if not sep:
            continue
        section, _, key = name.rpartition(".")
        env = section == ":env:"
        where = ("global" if env else section, key)
        if where not in from_env:  # a variable beats a file, as in pip
            settings[where] = value.strip().strip("'\"")
        if env:
            from_env.add(where)
    conf = folder / "pip.conf"
    sections: dict[str, list[str]] = {}
    for (section, key), value in settings.items():
        sections.setdefault(section, []).append(f"{key} = {value}")
    conf.write_text("".join(f"[{s}]\n" + "\n".join(lines) + "\n" for s, lines in sections.items()))
    volumes = [f"{conf}:/etc/pip.conf:ro"]
    named: set[Path] = set()
    for (_, key), value in settings.items():
        for token in value.split():
            if token.startswith(("/", "file:///")):
                path = Path(token.removeprefix("file://"))
                # A local index's pages link to files beside its simple/ folder.
                named.add(path.parent if key.endswith("index-url") else path)
    volumes += [f"{p}:{p}:ro" for p in sorted(named) if p.exists()]
    return volumes


def build_image(tag: str = IMAGE_TAG, base: str | None = None) -> str:
    """Build the project's Dockerfile as ``tag`` on the stand-in base."""
    base = base or standin_base()
    with tempfile.TemporaryDirectory() as tmp:
        volumes = pip_settings(Path(tmp))
        _run(
            [
                "buildah",
                "bud",
                "--isolation",
                "chroot",
                "--format",
                "docker",
                "--pull=never",
                "--build-arg",
                f"BASE={base}",
                *(arg for v in volumes for arg in ("--volume", v)),
                "--tag",
                tag,
                str(ROOT),
            ],
            timeout=1800,
        )
    return tag


def image_config(tag: str) -> dict[str, Any]:
    """The image's Docker config (``User``, ``Cmd``, ``Healthcheck``, ``ExposedPorts``...)."""
    doc = json.loads(_run(["buildah", "inspect", "--type", "image", tag]))
    config: dict[str, Any] = doc["Docker"]["config"]
    return config


def image_size(tag: str) -> str:
    """The image's size, uncompressed, as buildah shows it (``"364 MB"``)."""
    out = _run(["buildah", "images", "--json", tag])
    return str(json.loads(out)[0]["size"])


@dataclass(frozen=True)
class Namespace:
    """A network namespace ``name`` reachable from this host at ``address``."""

    name: str
    address: str

    def run(self, argv: Sequence[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        """``argv`` inside the namespace."""
        return subprocess.run(
            ["ip", "netns", "exec", self.name, *argv], capture_output=True, text=True, **kwargs
        )

    def pids(self) -> list[int]:
        out = subprocess.run(
            ["ip", "netns", "pids", self.name], capture_output=True, text=True, check=False
        )
        return [int(p) for p in out.stdout.split()]


@contextlib.contextmanager
def network_namespace() -> Iterator[Namespace]:
    """A namespace joined to the host by a veth pair on a /30 of 10.213.0.0/16; removed,
    with every process still in it, on exit."""
    tag = os.getpid() % 60000
    name, host_if, ns_if = f"cnn-image-{tag}", f"cnh{tag}", f"cnc{tag}"
    subnet = f"10.213.{tag % 250}.{4 * (tag // 250 % 60)}"
    prefix, last = subnet.rsplit(".", 1)
    host_ip, ns_ip = f"{prefix}.{int(last) + 1}", f"{prefix}.{int(last) + 2}"
    _run(["ip", "netns", "add", name])
    try:
        _run(["ip", "link", "add", host_if, "type", "veth", "peer", "name", ns_if, "netns", name])
        _run(["ip", "addr", "add", f"{host_ip}/30", "dev", host_if])
        _run(["ip", "link", "set", host_if, "up"])
        _run(["ip", "-n", name, "addr", "add", f"{ns_ip}/30", "dev", ns_if])
        _run(["ip", "-n", name, "link", "set", ns_if, "up"])
        _run(["ip", "-n", name, "link", "set", "lo", "up"])
        yield Namespace(name, ns_ip)
    finally:
        ns = Namespace(name, ns_ip)
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in ns.pids():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            deadline = time.monotonic() + 10
            while ns.pids() and time.monotonic() < deadline:
                time.sleep(0.1)
        subprocess.run(["ip", "link", "del", host_if], capture_output=True, check=False)
        subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)


@contextlib.contextmanager
def container(tag: str) -> Iterator[str]:
    """A working container of ``tag`` (removed on exit)."""
    name = _run(["buildah", "from", "--pull=never", tag]).strip()
    try:
        yield name
    finally:
        subprocess.run(["buildah", "rm", name], capture_output=True, check=False)


def buildah_run(
    name: str, argv: Sequence[str], volumes: Sequence[str] = (), env: Sequence[str] = ()
) -> list[str]:
    """The command line that runs ``argv`` in container ``name`` as its image's user."""
    return [
        "buildah",
        "run",
        "--isolation",
        "chroot",
        *(arg for v in volumes for arg in ("--volume", v)),
        *(arg for e in env for arg in ("--env", e)),
        name,
        "--",
        *argv,
    ]


def process_uid(pid: int) -> int:
    """The real uid of process ``pid``."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    raise LookupError(pid)


def main() -> int:
    why = missing()
    if why:
        print(f"cannot build here: {why}", file=sys.stderr)
        return 1
    started = time.monotonic()
    tag = build_image()
    took = time.monotonic() - started
    print(f"{tag}: {image_size(tag)}, on a base of {image_size(BASE_TAG)}, built in {took:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
