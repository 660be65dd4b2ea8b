"""The Docker path run for real with podman, for tests/test_container.py.

These machines have no Docker engine; Debian's `podman` (4.3, Docker-compatible) and `runc` run
containers as root, and `podman-compose` (from PyPI) runs docker/compose.yaml. Three things here
differ from a laptop with Docker, and each is dealt with in the open:

- The default runtime, crun, cannot set the container's rlimits and the cgroups are hybrid, so
  podman gets a containers.conf of the test's own (`CONTAINERS_CONF`): runc, cgroupfs, and
  rlimits it may set (measured: NOFILE above this process's hard limit and NPROC above
  kernel.pid_max are refused with "error setting rlimit type 7/6: operation not permitted").
- No container registry can be reached, so the base image is made locally by
  docker/make-debian-base.sh (debootstrap from Debian's mirror) and kept in podman's storage under
  a name that carries the hash of its recipe: a second run finds it and skips debootstrap.
- download.pytorch.org cannot be reached either, so the build takes its wheels where this
  machine's pip takes them (its index, extra indexes, find-links folders, constraints and CA
  bundle: `pip config list` and PIP_* variables), passed as the Dockerfile's build arguments,
  every local folder or file among them bind-mounted read-only at the same path into the build.

The cluster is the compose file itself plus an override file of the test's own that names the
image just built, two workers, and a network the test creates; a project name of its own keeps
its containers and volume apart from anything else on the machine. `ComposeCluster.down` runs
`down -v` as a user would and then removes whatever that left, by the project's label.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import resource
import secrets
import shlex
import shutil
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from tests.conftest import REPO
from tests.test_docker import CPU_INDEX

DOCKER = REPO / "docker"
BASE_SCRIPT = DOCKER / "make-debian-base.sh"
COMPOSE_FILE = DOCKER / "compose.yaml"
BASE_SUITE = "bookworm"  # its python3 is 3.11, the image's Python and the local wheels'
BASE_MIRROR = "http://deb.debian.org/debian"
BASE_LABEL = "org.cpusweep.base"  # set on the base, so every image built on it carries it
IMAGE = "localhost/cpusweep-test:latest"
PODMAN_COMPOSE = [sys.executable, "-m", "podman_compose"]
PYPI = "https://pypi.org/simple"


class ContainersUnavailable(RuntimeError):
    pass


def run(
    cmd: list[str], env: dict[str, str], timeout: float, cwd: Path = REPO
) -> subprocess.CompletedProcess[str]:
    """Run a command to its end; fail with its whole output if it fails."""
    out = subprocess.run(
        cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    if out.returncode != 0:
        raise AssertionError(
            f"exit code {out.returncode}: {shlex.join(cmd)}\n{out.stdout}\n{out.stderr}"
        )
    return out


def check_available() -> None:
    missing = [tool for tool in ("podman", "runc", "debootstrap") if not shutil.which(tool)]
    if missing:
        raise ContainersUnavailable(
            f"not installed: {', '.join(missing)} (apt-get install -y podman runc debootstrap)"
        )
    if os.geteuid() != 0:
        raise ContainersUnavailable("the container test runs podman and debootstrap as root")
    found = subprocess.run([*PODMAN_COMPOSE, "version"], capture_output=True, text=True)
    if found.returncode != 0:
        raise ContainersUnavailable(f"podman-compose: pip install podman-compose\n{found.stderr}")


def podman_env(folder: Path) -> dict[str, str]:
    """The environment for podman and podman-compose: a containers.conf of the test's own."""
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    nproc = resource.getrlimit(resource.RLIMIT_NPROC)[1]
    pid_max = int(Path("/proc/sys/kernel/pid_max").read_text())
    nofile = 1048576 if nofile == resource.RLIM_INFINITY else nofile
    nproc = pid_max if nproc == resource.RLIM_INFINITY else min(nproc, pid_max)
    conf = folder / "containers.conf"
    conf.write_text(
        "[containers]\n"
        f'default_ulimits = ["nofile={nofile}:{nofile}", "nproc={nproc}:{nproc}"]\n'
        "[engine]\n"
        'runtime = "runc"\n'
        'cgroup_manager = "cgroupfs"\n'
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CPUSWEEP_", "RAY_"))}
    return {**env, "CONTAINERS_CONF": str(conf)}


def image_exists(name: str, env: dict[str, str]) -> bool:
    return subprocess.run(["podman", "image", "exists", name], env=env).returncode == 0


def base_image(env: dict[str, str]) -> tuple[str, bool]:
    """The Debian base, made by docker/make-debian-base.sh unless podman's storage holds one
    of the same recipe already; (its name, whether it was made now)."""
    recipe = hashlib.sha256(BASE_SCRIPT.read_bytes() + f"{BASE_SUITE} {BASE_MIRROR}".encode())
    name = f"localhost/cpusweep-base:{BASE_SUITE}-{recipe.hexdigest()[:12]}"
    if image_exists(name, env):
        return name, False
    run(["sh", str(BASE_SCRIPT), name, BASE_SUITE, BASE_MIRROR], env, timeout=1200)
    return name, True


def _pip_settings() -> dict[str, str]:
    """This machine's pip settings (files, then PIP_* variables, which win): name -> value."""
    listed = subprocess.run(
        [sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True, check=True
    ).stdout
    settings: dict[str, str] = {}
    for line in listed.splitlines():
        match = re.fullmatch(r"(:env:|[\w-]+)\.([\w-]+)='(.*)'", line.strip())
        if match and match.group(1) in (":env:", "global", "install"):
            settings[match.group(2)] = match.group(3)
    return settings


def _local_path(location: str) -> Path | None:
    path = Path(location.removeprefix("file://")) if location.startswith("file://") else None
    if path is None and location.startswith("/"):
        path = Path(location)
    return path if path is not None and path.exists() else None


def _reachable(url: str, cert: str | None) -> bool:
    try:
        context = ssl.create_default_context(cafile=cert)
        with urllib.request.urlopen(url, timeout=15, context=context):
            return True
    except OSError:
        return False


def build_args() -> tuple[list[str], list[str]]:
    """(--build-arg and -v options) that give the build the wheels this machine's pip reaches:
    the defaults where download.pytorch.org answers, else pip's own sources and torch from them
    (a CUDA build: ALLOW_CUDA_TORCH=1)."""
    settings = _pip_settings()
    args: list[str] = []
    if not _reachable(CPU_INDEX + "/torch/", settings.get("cert")):
        args += [f"TORCH_INDEX={settings.get('index-url', PYPI)}", "ALLOW_CUDA_TORCH=1"]
    mounts: set[Path] = set()
    for key, arg in (
        ("index-url", "PIP_INDEX_URL"),
        ("extra-index-url", "PIP_EXTRA_INDEX_URL"),
        ("find-links", "PIP_FIND_LINKS"),
        ("constraint", "PIP_CONSTRAINT"),
        ("cert", "PIP_CERT"),
    ):
        if key not in settings:
            continue
        args.append(f"{arg}={settings[key]}")
        for location in settings[key].split():
            path = _local_path(location)
            if path is None:
                continue
            # A local index's pages link to files beside it (../../files/...): its parent too.
            mounts.add(path.parent if key.endswith("index-url") else path)
    build = [option for arg in args for option in ("--build-arg", arg)]
    volumes = [option for path in sorted(mounts) for option in ("-v", f"{path}:{path}:ro")]
    return build, volumes


def build_image(env: dict[str, str], base: str) -> list[str]:
    """`podman build` of docker/Dockerfile on the base, cached layer by layer in podman's
    storage; then the test's own superseded images (dangling, built on a cpusweep base) go.
    Returns the build command."""
    build, volumes = build_args()
    cmd = [
        "podman", "build", "-f", str(DOCKER / "Dockerfile"), "-t", IMAGE,
        "--build-arg", f"BASE_IMAGE={base}", *build, *volumes, str(REPO),
    ]  # fmt: skip
    run(cmd, env, timeout=1800)
    run(["podman", "image", "prune", "-f", "--filter", f"label={BASE_LABEL}"], env, timeout=300)
    return cmd


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class ComposeCluster:
    """docker/compose.yaml brought up by podman-compose: a head and two workers of one CPU
    each, on a network of the test's own, the dashboard on a free loopback port."""

    def __init__(self, folder: Path, env: dict[str, str], image: str, workers: int = 2):
        self.project = f"cpusweep-test-{secrets.token_hex(3)}"
        self.network = self.project
        self.port = free_port()
        self.workers = workers
        self.override = folder / "compose.test.yaml"
        self.override.write_text(
            json.dumps(  # JSON is YAML
                {
                    "services": {
                        "head": {"image": image},
                        "worker": {"image": image, "scale": workers},
                    },
                    "networks": {"default": {"name": self.network, "external": True}},
                },
                indent=2,
            )
        )
        self.env = {
            **env,
            "CPUSWEEP_DASHBOARD_PORT": str(self.port),
            "CPUSWEEP_WORKER_CPUS": "1",  # two workers on two cores: a core each
        }

    def compose(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        files = ["-f", str(COMPOSE_FILE), "-f", str(self.override)]
        return run([*PODMAN_COMPOSE, "-p", self.project, *files, *args], self.env, timeout)

    def exec(self, service: str, *cmd: str, timeout: float = 300) -> str:
        return self.compose("exec", "-T", service, *cmd, timeout=timeout).stdout

    def up(self) -> None:
        run(["podman", "network", "create", self.network], self.env, timeout=60)
        self.compose("up", "-d", "--no-build")
        deadline = time.monotonic() + 180
        status = ""
        while time.monotonic() < deadline:
            status = subprocess.run(
                ["podman", "exec", self.container("head"), "ray", "status"],
                env=self.env,
                capture_output=True,
                text=True,
            ).stdout
            if len(re.findall(r"^\s*1 node_[0-9a-f]+", status, re.M)) == 1 + self.workers:
                return
            time.sleep(2)
        raise AssertionError(f"the Ray cluster did not reach {1 + self.workers} nodes:\n{status}")

    def container(self, service: str, index: int = 1) -> str:
        return f"{self.project}_{service}_{index}"

    def inspect(self) -> list[dict[str, Any]]:
        """`podman inspect` of every container of the project."""
        ids = self._listed("ps", "-a", "-q")
        if not ids:
            return []
        found: list[dict[str, Any]] = json.loads(
            run(["podman", "inspect", *ids], self.env, timeout=60).stdout
        )
        return found

    def volume(self) -> Path:
        out = run(
            ["podman", "volume", "inspect", f"{self.project}_shared"], self.env, timeout=60
        ).stdout
        return Path(json.loads(out)[0]["Mountpoint"])

    def _listed(self, *cmd: str) -> list[str]:
        label = f"label=io.podman.compose.project={self.project}"
        out = run(["podman", *cmd, "--filter", label], self.env, timeout=60).stdout
        return out.split()

    def leftovers(self) -> dict[str, list[str]]:
        found = {
            "containers": self._listed("ps", "-a", "--format", "{{.Names}}"),
            "volumes": self._listed("volume", "ls", "--format", "{{.Name}}"),
            "pods": self._listed("pod", "ps", "--format", "{{.Name}}"),
        }
        return {kind: names for kind, names in found.items() if names}

    def down(self) -> dict[str, list[str]]:
        """`down -v` as a user would; then remove whatever it left (and the test's network).
        Returns what `down -v` left behind."""
        try:
            self.compose("down", "-v", timeout=300)
        except (AssertionError, subprocess.TimeoutExpired) as exc:
            print(f"podman-compose down -v failed: {exc}")
        left = self.leftovers()
        for name in left.get("containers", []):
            subprocess.run(["podman", "rm", "-f", "-t", "0", name], env=self.env)
        for name in left.get("pods", []):
            subprocess.run(["podman", "pod", "rm", "-f", name], env=self.env)
        for name in left.get("volumes", []):
            subprocess.run(["podman", "volume", "rm", "-f", name], env=self.env)
        subprocess.run(
            ["podman", "network", "rm", "-f", self.network], env=self.env, capture_output=True
        )
        return left
