"""docker/cpusweep.def, the Apptainer image for SLURM clusters, agrees with docker/Dockerfile,
with pyproject.toml, with what `runner slurm --container` runs in it, and with docs/clusters.md.
Apptainer cannot be installed on these machines, so this reads the file as Apptainer's parser
does (a header, then sections that start at lines whose first word begins with %) and checks
each section's shell syntax with /bin/sh, which runs them."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from runner.clusters.slurm import SlurmJob, SlurmRequest, render_script
from tests.conftest import REPO
from tests.test_docker import CPU_INDEX, dockerfile, dockerfile_args, pinned_ray, pyproject

DEF_FILE = REPO / "docker" / "cpusweep.def"
# Apptainer's sections (pkg/build/types/parser/deffile.go: validSections).
SECTIONS = {
    "help",
    "setup",
    "files",
    "labels",
    "environment",
    "pre",
    "post",
    "runscript",
    "test",
    "startscript",
    "arguments",
}


def definition() -> tuple[dict[str, str], dict[str, str]]:
    """(header keywords, section bodies), as Apptainer splits the file."""
    header: dict[str, str] = {}
    sections: dict[str, str] = {}
    current = None
    for line in DEF_FILE.read_text().splitlines():
        words = line.split()
        if words and words[0].startswith("%"):
            current = words[0][1:].lower()
            assert current not in sections, f"%{current} twice"
            sections[current] = ""
        elif current is not None:
            sections[current] += line + "\n"
        elif line.strip() and not line.strip().startswith("#"):
            key, sep, value = line.partition(":")
            assert sep, f"header line without a keyword: {line!r}"
            header[key.strip().lower()] = value.split("#")[0].strip()
    return header, sections


def body_lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip()]


def post_commands() -> str:
    """%post with continuation lines joined and comments dropped."""
    _, sections = definition()
    text = sections["post"].replace("\\\n", " ")
    return "\n".join(
        " ".join(line.split()) for line in body_lines(text) if not line.startswith("#")
    )


def test_the_file_has_a_header_and_only_sections_apptainer_knows() -> None:
    header, sections = definition()
    assert header["bootstrap"] == "docker"
    assert set(sections) <= SECTIONS, set(sections) - SECTIONS
    assert {"files", "post", "runscript", "test"} <= set(sections)


def test_image_starts_from_the_python_the_dockerfile_uses() -> None:
    header, _ = definition()
    [docker_base] = [rest for word, rest in dockerfile() if word == "FROM"]
    expected = docker_base.replace("${PYTHON_VERSION}", dockerfile_args()["PYTHON_VERSION"])
    assert header["from"] == expected  # python:3.11-slim: `python` is on the PATH


def test_image_copies_what_the_dockerfile_copies_and_it_exists() -> None:
    _, sections = definition()
    copied = {}
    for line in body_lines(sections["files"]):
        source, destination = line.split()
        assert (REPO / source).exists(), source
        copied[source] = destination
    docker_sources = set()
    for word, rest in dockerfile():
        if word == "COPY" and "entrypoint" not in rest:
            *sources, _ = rest.split()
            docker_sources.update(sources)
            for source in sources:  # the same place as the Dockerfile's WORKDIR /opt/cpusweep
                assert copied[source] == f"/opt/cpusweep/{source}", source
    assert set(copied) == docker_sources
    # Every top-level package pip finds (runner.* are subpackages inside runner/) is copied.
    found = pyproject()["tool"]["setuptools"]["packages"]["find"]["include"]
    top_level = {name.split(".")[0] for name in found}
    assert top_level == {"runner", "methods"}
    assert top_level <= set(copied)


def test_image_installs_the_cpu_torch_then_the_pinned_ray_exactly_as_the_dockerfile() -> None:
    post = post_commands()
    args = dockerfile_args()
    torch_line = next(line for line in post.splitlines() if "torch==" in line)
    assert f'--index-url "{CPU_INDEX}"' in torch_line and args["TORCH_INDEX"] == CPU_INDEX
    assert f'"torch=={args["TORCH_VERSION"]}"' in torch_line
    assert f'"torchvision=={args["TORCHVISION_VERSION"]}"' in torch_line
    lines = post.splitlines()
    project = lines.index('pip install ".[cluster]"')
    assert lines.index(torch_line) < project  # torch first: pip then keeps the CPU wheels
    assert "cd /opt/cpusweep" in lines[:project]
    extras = pyproject()["project"]["optional-dependencies"]
    assert extras["cluster"] == [f"ray[default]=={pinned_ray()}"]
    assert not re.search(r"\bray(\[\w+\])?[=<>~]", post)  # no second, diverging Ray
    assert "assert not torch.version.cuda" in post


def test_sections_are_valid_shell_for_the_sh_that_runs_them(tmp_path: Path) -> None:
    _, sections = definition()
    for name in ("post", "environment", "runscript", "test"):
        script = tmp_path / name
        script.write_text(sections[name])
        out = subprocess.run(["sh", "-n", str(script)], capture_output=True, text=True)
        assert out.returncode == 0, f"%{name}: {out.stderr}"


def test_runscript_and_test_run_the_runner_and_its_slurm_launcher() -> None:
    _, sections = definition()
    assert body_lines(sections["runscript"]) == ['exec python -m runner "$@"']
    env = dict(os.environ, PYTHONPATH=str(REPO))
    for line in body_lines(sections["test"]):
        words = shlex.split(line.replace(">/dev/null", ""))
        assert words[0] == "python", line
        out = subprocess.run(
            [sys.executable, *words[1:]],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
        )
        assert out.returncode == 0, f"{line}: {out.stderr}"


def test_the_sbatch_script_runs_python_from_this_image(tmp_path: Path) -> None:
    image = tmp_path / "cpusweep.sif"
    job = SlurmJob(
        name="x",
        job_file=tmp_path / "x.toml",
        results=tmp_path / "results" / "x",
        python=sys.executable,
        workdir=tmp_path,
        request=SlurmRequest(nodes=2),
        container=image,
    )
    script = render_script(job)
    assert "PYTHON=(apptainer exec --bind " in script
    assert f" {image} python)" in script  # the image's python, not the host's
    assert sys.executable not in script


@pytest.mark.parametrize(
    "text",
    [
        "apptainer build cpusweep.sif docker/cpusweep.def",
        "--container cpusweep.sif",
    ],
)
def test_cluster_docs_tell_how_to_build_and_use_the_image(text: str) -> None:
    assert text in (REPO / "docs" / "clusters.md").read_text()
    assert text in DEF_FILE.read_text()
