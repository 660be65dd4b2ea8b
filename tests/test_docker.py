"""docker/: the image and the compose file agree with each other, with pyproject.toml and
with docs/clusters.md. These machines cannot run Docker, so this reads the files as Docker and
compose would (instructions, `${VAR:-default}` interpolation, the shell of the entry point)."""

from __future__ import annotations

import os
import re
import shlex
import stat
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import REPO

DOCKER = REPO / "docker"
COMPOSE_FILE = DOCKER / "compose.yaml"
CLUSTER_DOCS = REPO / "docs" / "clusters.md"  # the Docker compose and existing-Ray sections
CPU_INDEX = "https://download.pytorch.org/whl/cpu"


def dockerfile_source() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in (DOCKER / "Dockerfile").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        pending += " " + line.removesuffix("\\").strip()
        if line.endswith("\\"):
            continue
        word, _, rest = pending.strip().partition(" ")
        instructions.append((word.upper(), rest.strip()))
        pending = ""
    return instructions


def _substitute(text: str, args: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], text)


def dockerfile() -> list[tuple[str, str]]:
    """The instructions as a build with no --build-arg reads them: FROM's image resolved from
    the defaults of the ARGs declared before it (only FROM can use those); the rest as written
    (a RUN's ${...} are its shell's)."""
    before_from: dict[str, str] = {}
    instructions = []
    seen_from = False
    for word, rest in dockerfile_source():
        if word == "ARG" and not seen_from and "=" in rest:
            name, _, value = rest.partition("=")
            before_from[name] = _substitute(value, before_from)
        elif word == "FROM":
            seen_from = True
            rest = _substitute(rest, before_from)
        instructions.append((word, rest))
    return instructions


def dockerfile_args() -> dict[str, str]:
    args = {}
    for word, rest in dockerfile():
        if word == "ARG" and "=" in rest:
            name, _, value = rest.partition("=")
            args[name] = value
    return args


def expand_args(text: str) -> str:
    args = dockerfile_args()
    return re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], text)


def interpolate(value: str) -> str:
    """Compose interpolation with no variable set: `${VAR:-default}` -> default, `$$` -> `$`."""
    unset = re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", value.replace("$$", "\0"))
    assert not re.search(r"\$\{?\w", unset), f"variable without a default in {value!r}"
    return unset.replace("\0", "$")


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text())
    return data


def pyproject() -> dict[str, Any]:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def pinned_ray() -> str:
    [ray] = [d for d in pyproject()["project"]["dependencies"] if re.match(r"ray\b", d)]
    match = re.fullmatch(r"ray==(\d+\.\d+\.\d+)", ray)
    assert match, f"pyproject.toml must pin Ray exactly (every node and driver must match): {ray}"
    return match.group(1)


def command(service: str) -> list[str]:
    cmd = compose()["services"][service]["command"]
    words = [interpolate(str(w)) for w in (cmd if isinstance(cmd, list) else shlex.split(cmd))]
    if words[:2] == ["sh", "-c"]:
        return shlex.split(words[2].replace("exec ", "", 1))
    return words


def flag(words: list[str], name: str) -> str | None:
    for word in words:
        if word.startswith(name + "="):
            return word.split("=", 1)[1]
    return None


# --- the image -----------------------------------------------------------------------------


def test_image_runs_the_python_that_pyproject_allows() -> None:
    [base] = [expand_args(rest) for word, rest in dockerfile() if word == "FROM"]
    match = re.fullmatch(r"python:(\d+)\.(\d+)-slim", base)
    assert match, base
    image_python = (int(match.group(1)), int(match.group(2)))
    lowest = re.fullmatch(r">=(\d+)\.(\d+)", pyproject()["project"]["requires-python"])
    assert lowest and image_python >= (int(lowest.group(1)), int(lowest.group(2)))
    # The cluster docs tell users which Python their driver must run to join this cluster.
    assert f"Python {image_python[0]}.{image_python[1]}" in CLUSTER_DOCS.read_text()


def test_base_image_is_a_build_argument_defaulting_to_the_official_python() -> None:
    source = dockerfile_source()
    [start] = [i for i, (word, _) in enumerate(source) if word == "FROM"]
    assert source[start] == ("FROM", "${BASE_IMAGE}")
    assert ("ARG", "BASE_IMAGE=python:${PYTHON_VERSION}-slim") in source[:start]
    # What docker/make-debian-base.sh makes instead must be the same Python.
    script = DOCKER / "make-debian-base.sh"
    assert os.stat(script).st_mode & stat.S_IXUSR
    assert subprocess.run(["sh", "-n", str(script)]).returncode == 0  # it parses
    version = tuple(int(x) for x in dockerfile_args()["PYTHON_VERSION"].split("."))
    assert f"sys.version_info[:2] == {version}" in script.read_text()


PIP_SOURCES = (
    "PIP_INDEX_URL",
    "PIP_EXTRA_INDEX_URL",
    "PIP_FIND_LINKS",
    "PIP_CONSTRAINT",
    "PIP_CERT",
)


def test_wheel_sources_are_build_arguments_pip_sees_only_when_given() -> None:
    source = dockerfile_source()
    start = [word for word, _ in source].index("FROM")
    first_run = [word for word, _ in source].index("RUN")
    declared = [rest for word, rest in source[start:first_run] if word == "ARG"]
    for name in PIP_SOURCES:
        # No default: unset unless --build-arg gives it (an empty PIP_INDEX_URL breaks pip).
        assert name in declared, name
    image_env = " ".join(rest for word, rest in source if word == "ENV")
    assert not any(name in image_env for name in PIP_SOURCES)  # the build's, not the image's


def test_a_cuda_torch_is_refused_unless_allowed(tmp_path: Path) -> None:
    [run] = [rest for word, rest in dockerfile() if word == "RUN" and ".[cluster]" in rest]
    # The checks run from /, against the installed project rather than the copied sources.
    assert re.search(r'pip install "\.\[cluster\]" && cd / && python -m runner --help', run)
    match = re.search(r'python -c "([^"]*)"', run)
    assert match and "${ALLOW_CUDA_TORCH}" in match.group(1)
    assert dockerfile_args()["ALLOW_CUDA_TORCH"] == "0"
    for module in ("torch", "ray"):  # stand-ins: the check reads torch.version.cuda only
        (tmp_path / module).mkdir()
    env = dict(os.environ, PYTHONPATH=f"{tmp_path}:{REPO}")

    def check(allow: str, cuda: str | None) -> int:
        (tmp_path / "torch" / "__init__.py").write_text(
            f"__version__ = '2.14.1'\nclass version:\n    cuda = {cuda!r}\n"
        )
        code = match.group(1).replace("${ALLOW_CUDA_TORCH}", allow)
        return subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path).returncode

    assert check("0", None) == 0
    assert check("0", "13.0") != 0
    assert check("1", "13.0") == 0


def test_image_installs_the_ray_that_pyproject_pins() -> None:
    version = pinned_ray()
    extras = pyproject()["project"]["optional-dependencies"]
    assert extras["cluster"] == [f"ray[default]=={version}"]  # dashboard + job server, same Ray
    runs = [rest for word, rest in dockerfile() if word == "RUN"]
    assert any('pip install ".[cluster]"' in run for run in runs)
    for run in runs:  # no second, diverging Ray anywhere in the image
        assert not re.search(r"\bray(\[\w+\])?[=<>~]", run), run
    assert f"Ray {version}" in CLUSTER_DOCS.read_text()


def test_image_takes_torch_from_the_cpu_wheel_index_before_the_project() -> None:
    runs = [expand_args(rest) for word, rest in dockerfile() if word == "RUN"]
    [torch_step] = [i for i, run in enumerate(runs) if "torch==" in run]
    assert f'--index-url "{CPU_INDEX}"' in runs[torch_step]
    assert "torchvision==" in runs[torch_step]
    [project_step] = [i for i, run in enumerate(runs) if ".[cluster]" in run]
    assert torch_step < project_step  # so pip keeps the CPU wheels for `torch>=...`
    args = dockerfile_args()
    torch_version = tuple(int(x) for x in args["TORCH_VERSION"].split("."))
    [bound] = [d for d in pyproject()["project"]["dependencies"] if d.startswith("torch>=")]
    assert torch_version >= tuple(int(x) for x in bound.removeprefix("torch>=").split("."))


def test_image_runs_as_a_non_root_user_and_copies_what_exists() -> None:
    instructions = dockerfile()
    users = [i for i, (word, _) in enumerate(instructions) if word == "USER"]
    assert users, "the image must not run as root"
    user = instructions[users[-1]][1]
    assert user not in ("root", "0") and not user.startswith("0:")
    assert any(word == "RUN" and "useradd" in rest and user in rest for word, rest in instructions)
    start = [i for i, (word, _) in enumerate(instructions) if word in ("ENTRYPOINT", "CMD")]
    assert users[-1] < min(start)

    ignored = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for must in (".venv", "results", "data", ".git"):
        assert must in ignored
    for word, rest in instructions:
        if word == "COPY":
            *sources, _ = rest.split()
            for source in sources:
                assert (REPO / source).exists(), source
                assert source.split("/")[0] not in ignored, f"{source} is excluded by .dockerignore"


def test_entry_point_and_default_command_exist() -> None:
    instructions = dockerfile()
    [entry] = [yaml.safe_load(rest) for word, rest in instructions if word == "ENTRYPOINT"]
    [cmd] = [yaml.safe_load(rest) for word, rest in instructions if word == "CMD"]
    [copied] = [rest.split() for word, rest in instructions if word == "COPY" and entry[0] in rest]
    script = REPO / copied[0]
    assert script.read_text().startswith("#!/bin/sh")
    assert os.stat(script).st_mode & stat.S_IXUSR
    assert subprocess.run(["sh", "-n", str(script)]).returncode == 0  # it parses
    assert cmd[:3] == ["python", "-m", "runner"]  # what the README tells users to run
    out = subprocess.run(
        [sys.executable, "-m", "runner", *cmd[3:]],
        cwd=REPO,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0 and "submit" in out.stdout


def test_entry_point_makes_the_token_on_the_head_and_workers_read_it(tmp_path: Path) -> None:
    script = str(DOCKER / "entrypoint.sh")
    token = tmp_path / "shared" / ".ray" / "auth_token"
    env = dict(os.environ, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token))
    env.pop("RAY_AUTH_TOKEN", None)
    head = subprocess.run(
        ["sh", script, "cat", str(token)],
        env=dict(env, CPUSWEEP_ROLE="head"),
        capture_output=True,
        text=True,
    )
    assert head.returncode == 0, head.stderr
    assert re.fullmatch(r"[0-9a-f]{64}", head.stdout)  # the command ran, after the token
    assert stat.S_IMODE(token.stat().st_mode) == 0o600
    worker = subprocess.run(
        ["sh", script, "cat", str(token)],
        env=dict(env, CPUSWEEP_ROLE="worker"),
        capture_output=True,
        text=True,
    )
    assert worker.stdout == head.stdout  # the same token, not a new one


# --- the compose file ----------------------------------------------------------------------


def test_compose_builds_one_image_for_every_node() -> None:
    services = compose()["services"]
    assert set(services) == {"head", "worker"}
    for service in services.values():
        build = service["build"]
        context = (COMPOSE_FILE.parent / build["context"]).resolve()
        assert context == REPO and (context / build["dockerfile"]).is_file()
        assert service["image"] == services["head"]["image"]


def test_head_runs_no_cells_and_workers_join_it() -> None:
    head, worker = command("head"), command("worker")
    assert head[:3] == ["ray", "start", "--head"] and "--block" in head
    assert flag(head, "--num-cpus") == "0"
    port = flag(head, "--port")
    assert worker[:2] == ["ray", "start"] and "--block" in worker
    assert flag(worker, "--address") == f"head:{port}"  # the head service, on its GCS port
    assert "--head" not in worker


def test_worker_cpus_are_optional(tmp_path: Path) -> None:
    """The worker's shell command, run with a stand-in `ray` that prints its arguments."""
    script = interpolate(compose()["services"]["worker"]["command"][2])
    fake = tmp_path / "ray"
    fake.write_text('#!/bin/sh\necho "$@"\n')
    fake.chmod(0o755)
    env = dict(os.environ, PATH=f"{tmp_path}:{os.environ['PATH']}")
    env.pop("CPUSWEEP_WORKER_CPUS", None)
    plain = subprocess.run(["sh", "-c", script], env=env, capture_output=True, text=True)
    assert "--num-cpus" not in plain.stdout and "--address=head:6379" in plain.stdout
    four = subprocess.run(
        ["sh", "-c", script],
        env=dict(env, CPUSWEEP_WORKER_CPUS="4"),
        capture_output=True,
        text=True,
    )
    assert "--num-cpus=4" in four.stdout.split()


def test_every_node_mounts_the_shared_volume_at_the_same_path() -> None:
    doc = compose()
    services = doc["services"]
    mounts = {name: [str(v).split(":") for v in s["volumes"]] for name, s in services.items()}
    assert mounts["head"] == mounts["worker"]
    [(volume, target)] = mounts["head"]
    assert volume in doc["volumes"]  # a named volume, not a folder of one host
    instructions = dockerfile()
    assert ("WORKDIR", target) == [i for i in instructions if i[0] == "WORKDIR"][-1]
    for service in services.values():
        env = service["environment"]
        assert env["CPUSWEEP_DATA_ROOT"].startswith(target + "/")
        assert env["RAY_AUTH_MODE"] == "token"
        assert env["RAY_AUTH_TOKEN_PATH"].startswith(target + "/")  # every node reads it
    assert services["head"]["environment"]["CPUSWEEP_ROLE"] == "head"
    assert services["worker"]["environment"]["CPUSWEEP_ROLE"] != "head"
    image_env = " ".join(rest for word, rest in instructions if word == "ENV")
    assert f"CPUSWEEP_DATA_ROOT={services['head']['environment']['CPUSWEEP_DATA_ROOT']}" in (
        image_env
    )


def _bytes(size: str) -> int:
    units = {"": 1, "b": 1, "k": 2**10, "kb": 2**10, "m": 2**20, "mb": 2**20, "g": 2**30}
    units["gb"] = 2**30
    match = re.fullmatch(r"(\d+)\s*([a-z]*)", size.lower())
    assert match, size
    return int(match.group(1)) * units[match.group(2)]


def test_object_store_fits_in_shared_memory() -> None:
    for name, service in compose()["services"].items():
        shm = _bytes(interpolate(service["shm_size"]))
        store = int(flag(command(name), "--object-store-memory") or 0)
        assert 0 < store < shm, name  # else Ray falls back to a slow disk-backed store


@pytest.mark.parametrize("service", ["head", "worker"])
def test_nothing_is_published_beyond_loopback_by_default(service: str) -> None:
    ports = compose()["services"][service].get("ports", [])
    if service == "worker":
        assert not ports  # scaling would clash, and workers need no inbound port from the host
        assert "container_name" not in compose()["services"][service]  # --scale needs this
        return
    assert ports
    for port in ports:
        host_ip = interpolate(str(port)).rsplit(":", 2)[0]
        assert host_ip == "127.0.0.1", port
        assert "CPUSWEEP_BIND" in str(port)  # the documented opt-in
    dashboard = flag(command("head"), "--dashboard-port")
    assert any(p.endswith(f":{dashboard}") for p in ports)
    # The host's side is the same port unless CPUSWEEP_DASHBOARD_PORT names another.
    assert f"127.0.0.1:{dashboard}:{dashboard}" in [interpolate(str(p)) for p in ports]
    assert any("${CPUSWEEP_DASHBOARD_PORT:-" in str(p) for p in ports)


def test_head_is_checked_healthy_before_workers_start() -> None:
    services = compose()["services"]
    assert services["head"]["healthcheck"]["test"][1:] == ["ray", "status"]
    assert services["worker"]["depends_on"]["head"]["condition"] == "service_healthy"


def test_cluster_docs_commands_name_real_files_and_services() -> None:
    readme = CLUSTER_DOCS.read_text().replace("\\\n", " ")
    commands = re.findall(r"docker compose -f (\S+) (\w+)((?: [^`\n]*)?)", readme)
    assert len(commands) >= 5
    services = set(compose()["services"])
    for path, verb, rest in commands:
        assert (REPO / path).resolve() == COMPOSE_FILE
        if verb == "exec":
            assert rest.split()[0] in services, rest
    for job in re.findall(r"/opt/cpusweep/(jobs/[\w.-]+\.toml)", readme):
        assert (REPO / job).is_file(), job
    [copied_jobs] = [rest for word, rest in dockerfile() if word == "COPY" and "jobs" in rest]
    assert copied_jobs.split()[-1] == "./jobs"  # under WORKDIR /opt/cpusweep
