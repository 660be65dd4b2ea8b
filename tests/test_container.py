"""The Docker path for real: docker/Dockerfile built and docker/compose.yaml brought up with
podman and podman-compose (tests/container_cluster.py says how, and why each difference from
Docker), a head and two workers on a network of the test's own, and the quickstart submitted
inside it exactly as docs/clusters.md (Docker compose) says:

- as a Ray Job on the head, every cell of jobs/quickstart.toml finishes once, on both workers,
  and the results are read on the host straight from the compose volume; the page's second
  form (`--address auto`) then resumes the same results folder with nothing left to run;
- only the dashboard is published, on 127.0.0.1 alone, and it answers there and nowhere else;
- every process in every container runs as the image's non-root user;
- `podman-compose down -v` removes the containers and the volume (checked after every run,
  passed or failed; whatever it leaves is removed and fails the run).

Run with `python -m pytest -m container -rA` (as root, with podman, runc, debootstrap and
podman-compose; .ci/run installs them). -rA shows the times of each step. The image stays in
podman's storage as the build cache (docs/containers.md).
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import REPO
from tests.container_cluster import (
    IMAGE,
    ComposeCluster,
    ContainersUnavailable,
    base_image,
    build_image,
    check_available,
    podman_env,
    run,
)
from tests.faults import assert_complete, cli_env, job_keys
from tests.test_docker import pinned_ray

pytestmark = [pytest.mark.container, pytest.mark.timeout(3600)]

QUICKSTART = REPO / "jobs" / "quickstart.toml"
IN_IMAGE = "/opt/cpusweep/jobs/quickstart.toml"  # the path docs/clusters.md gives
USER = "cpusweep"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ComposeCluster]:
    try:
        check_available()
    except ContainersUnavailable as exc:
        pytest.fail(str(exc))
    folder = tmp_path_factory.mktemp("container")
    env = podman_env(folder)
    started = time.monotonic()
    base, made = base_image(env)
    how = "made" if made else "found in podman's storage"
    print(f"base image {base}: {how} in {time.monotonic() - started:.0f} s")
    started = time.monotonic()
    command = build_image(env, base)
    print(f"podman build: {time.monotonic() - started:.0f} s\n  {' '.join(command)}")
    cluster = ComposeCluster(folder, env, IMAGE)
    try:
        started = time.monotonic()
        cluster.up()
        print(f"podman-compose up (3 Ray nodes): {time.monotonic() - started:.0f} s")
        yield cluster
    finally:
        started = time.monotonic()
        left = cluster.down()
        print(f"podman-compose down -v: {time.monotonic() - started:.0f} s")
    assert not left, f"`podman-compose down -v` left these behind (now removed): {left}"


def read_rows(results: Path) -> pd.DataFrame:
    return pd.concat(
        [pd.read_parquet(p) for p in sorted((results / "cells").glob("*.parquet"))],
        ignore_index=True,
    )


def test_quickstart_runs_every_cell_once_on_both_workers(cluster: ComposeCluster) -> None:
    # docs/clusters.md: submit as a Ray Job on the head, follow its logs.
    started = time.monotonic()
    submitted = cluster.exec(
        "head", "ray", "job", "submit", "--no-wait", "--",
        "python", "-m", "runner", "submit", IN_IMAGE, "--results", "/shared/results/quickstart",
    )  # fmt: skip
    [job] = set(re.findall(r"raysubmit_\w+", submitted))
    logs = cluster.exec("head", "ray", "job", "logs", "--follow", job, timeout=1200)
    status = cluster.exec("head", "ray", "job", "status", job)
    print(f"quickstart as a Ray Job: {time.monotonic() - started:.0f} s")
    assert f"Job '{job}' succeeded" in status, logs + status

    expected = job_keys(QUICKSTART)
    finished = re.findall(r"^[✓⚠] .* ([0-9a-f]{16})$", logs, re.M)
    assert sorted(finished) == sorted(expected), logs  # each cell reported once, none else

    # The results, read on the host from the compose volume itself.
    results = cluster.volume() / "results" / "quickstart"
    assert_complete(results, expected)
    rows = read_rows(results)
    assert sorted(rows["cell_key"]) == sorted(expected)
    assert set(rows["status"]) == {"ok"}
    workers = {
        c["Config"]["Hostname"]
        for c in cluster.inspect()
        if c["Config"]["Labels"]["com.docker.compose.service"] == "worker"
    }
    assert len(workers) == 2
    assert set(rows["hostname"]) == workers  # both workers ran cells; the head none
    assert {n.split(":")[0] for n in rows["node"]} == workers
    out = subprocess.run(
        [sys.executable, "-m", "runner", "status", str(results)],
        cwd=REPO,
        env=cli_env(),
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"{len(expected)} cells: {len(expected)} done, 0 failed, 0 to run" in out.stdout

    # docs/clusters.md's other form, a driver on the head with --address auto and no --results:
    # the same folder (relative to /shared), nothing left to run, no row written again.
    before = {p.name: p.stat().st_mtime_ns for p in (results / "cells").glob("*.parquet")}
    again = cluster.exec("head", "python", "-m", "runner", "submit", IN_IMAGE, "--address", "auto")
    assert f"{len(expected)} done, 0 failed, 0 to run" in again, again
    after = {p.name: p.stat().st_mtime_ns for p in (results / "cells").glob("*.parquet")}
    assert after == before


def host_addresses() -> list[str]:
    """This machine's IPv4 addresses other than loopback (its own network and podman's)."""
    out = subprocess.run(["ip", "-j", "-4", "addr"], capture_output=True, text=True, check=True)
    return [
        info["local"]
        for link in json.loads(out.stdout)
        for info in link.get("addr_info", [])
        if not info["local"].startswith("127.")
    ]


def test_only_the_dashboard_is_published_and_only_on_loopback(cluster: ComposeCluster) -> None:
    containers = {c["Name"]: c for c in cluster.inspect()}
    assert len(containers) == 3
    head = cluster.container("head")
    for name, container in containers.items():
        bindings = container["HostConfig"]["PortBindings"] or {}
        if name == head:
            loopback = {"HostIp": "127.0.0.1", "HostPort": str(cluster.port)}
            assert bindings == {"8265/tcp": [loopback]}
        else:
            assert bindings == {}, name
    published = run(["podman", "port", head], cluster.env, timeout=60).stdout.split("\n")
    assert published[0].strip() == f"8265/tcp -> 127.0.0.1:{cluster.port}"

    # What the host sees: the Jobs API answers on loopback (with the cluster's token)...
    token = (cluster.volume() / ".ray" / "auth_token").read_text()
    request = urllib.request.Request(
        f"http://127.0.0.1:{cluster.port}/api/version",
        headers={"Authorization": f"Bearer {token}"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        assert json.load(response)["ray_version"] == pinned_ray()
    # ...and on no other address of this machine.
    addresses = host_addresses()
    assert addresses
    for address in addresses:
        with pytest.raises(OSError), socket.create_connection((address, cluster.port), 5):
            pass


def test_every_process_runs_as_the_non_root_user(cluster: ComposeCluster) -> None:
    containers = cluster.inspect()
    assert len(containers) == 3
    for container in containers:
        name = container["Name"]
        assert container["Config"]["User"] == USER, name
        top = run(["podman", "top", name, "user", "comm"], cluster.env, timeout=60).stdout
        processes = [line.split(None, 1) for line in top.splitlines()[1:] if line.strip()]
        assert any(comm.startswith("raylet") or comm == "gcs_server" for _, comm in processes)
        assert {user for user, _ in processes} == {USER}, top
    uid = int(cluster.exec("head", "id", "-u"))
    assert uid != 0
    assert (cluster.volume() / ".ray" / "auth_token").stat().st_uid == uid  # written by it
