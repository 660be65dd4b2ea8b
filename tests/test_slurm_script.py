"""`python -m runner slurm` without a SLURM cluster: the sbatch script it writes (options,
signal, container, shell syntax), the requests it refuses before writing anything, the
explanations of sbatch's refusals, the Ray node launcher's settings, and the rows' SLURM
columns. tests/test_slurm.py runs the same scripts on a real SLURM cluster."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from runner.clusters.slurm import (
    SlurmError,
    SlurmJob,
    SlurmRequest,
    explain_refusal,
    render_script,
    signal_lead,
    time_limit_seconds,
    write_script,
)
from runner.clusters.slurm_node import (
    build_parser,
    marked_processes,
    object_store_bytes,
    ray_params,
    slurm_memory_bytes,
    stop_processes,
)
from tests.faults import cli_env, digits_job, run_cli

MiB = 2**20


def make_job(tmp_path: Path, **request: object) -> SlurmJob:
    return SlurmJob(
        name="example",
        job_file=tmp_path / "jobs" / "example.toml",
        results=tmp_path / "results" / "example",
        python="/opt/venv/bin/python",
        workdir=tmp_path,
        request=SlurmRequest(**request),  # type: ignore[arg-type]
        command="python -m runner slurm jobs/example.toml --submit",
    )


def sbatch_options(script: str) -> dict[str, str]:
    """The #SBATCH options, as sbatch reads them: up to the first command."""
    options = {}
    for line in script.splitlines()[1:]:
        if line and not line.startswith("#"):
            break
        if line.startswith("#SBATCH "):
            name, _, value = line.removeprefix("#SBATCH ").partition("=")
            options[name] = value
    return options


def test_script_asks_slurm_for_what_the_options_say(tmp_path: Path) -> None:
    job = make_job(
        tmp_path,
        nodes=3,
        cpus_per_node=8,
        mem_per_cpu="2G",
        time="04:00:00",
        partition="cpu",
        account="lab",
    )
    options = sbatch_options(render_script(job))
    assert options == {
        "--job-name": "cpusweep-example",
        "--nodes": "3",
        "--ntasks-per-node": "1",  # one Ray node per SLURM node
        "--cpus-per-task": "8",
        "--mem-per-cpu": "2G",
        "--time": "04:00:00",
        "--partition": "cpu",
        "--account": "lab",
        "--chdir": str(tmp_path),
        "--output": f"{job.results}/slurm/slurm-%j.out",
        "--open-mode": "append",  # a requeued job appends to the same output
        "--signal": "B:USR1@120",  # to the batch shell, which stops the driver
        "--requeue": "",
    }


def test_without_cpus_per_node_it_asks_for_whole_nodes(tmp_path: Path) -> None:
    options = sbatch_options(render_script(make_job(tmp_path)))
    assert "--exclusive" in options and "--cpus-per-task" not in options
    assert "--time" not in options and "--partition" not in options  # the cluster's defaults
    assert options["--nodes"] == "1"


def test_the_driver_and_every_ray_node_run_the_same_python(tmp_path: Path) -> None:
    script = render_script(make_job(tmp_path))
    assert "PYTHON=(/opt/venv/bin/python)" in script
    runs = [line.strip() for line in script.splitlines() if "-m runner" in line]
    assert any("-m runner.clusters.slurm_node" in line for line in runs)
    assert any("-m runner submit" in line for line in runs)
    for line in runs:
        if not line.startswith(("#", "say ", "echo ")):  # messages aside, every run of Python
            assert line.startswith('"${PYTHON[@]}" -m runner'), line
    assert re.search(
        r'-m runner submit "\$JOB" "\$\{SUBMIT_ARGS\[@\]\}" --address "\$ADDRESS"', script
    )
    assert "ray stop" not in script.replace("never `ray stop`", "")


def test_container_runs_every_node_and_the_driver_through_apptainer(tmp_path: Path) -> None:
    image = tmp_path / "cpusweep.sif"
    image.write_bytes(b"not really an image")
    data = tmp_path / "data"
    data.mkdir()
    job = make_job(tmp_path)
    job = SlurmJob(**{**job.__dict__, "container": image, "data_root": data})
    script = render_script(job)
    [line] = [line for line in script.splitlines() if line.startswith("PYTHON=(")]
    words = line.removeprefix("PYTHON=(").split(")")[0].split()
    assert words[:3] == ["apptainer", "exec", "--bind"]
    binds = words[3].split(",")
    # The results folder, the job file's folder, the working folder and the data root, each
    # at the same path inside.
    assert {str(job.results), str(job.job_file.parent), str(tmp_path), str(data)} == set(binds)
    assert words[4:] == [str(image), "python"]
    assert "--data-root " + str(data) in script


def test_a_missing_image_or_data_root_is_refused_with_the_fix(tmp_path: Path) -> None:
    job = make_job(tmp_path)
    with pytest.raises(SlurmError, match=r"apptainer build cpusweep.sif docker/cpusweep.def"):
        write_script(SlurmJob(**{**job.__dict__, "container": tmp_path / "missing.sif"}))
    image = tmp_path / "image.sif"
    image.write_bytes(b"x")
    with pytest.raises(SlurmError, match=r"--data-root .* does not exist"):
        write_script(
            SlurmJob(**{**job.__dict__, "container": image, "data_root": tmp_path / "nodata"})
        )
    assert not job.script_path.exists()


def test_script_parses_and_says_how_to_submit_it_when_run_outside_slurm(tmp_path: Path) -> None:
    job = make_job(tmp_path, time="1-00:00:00")
    path = write_script(job)
    assert path == tmp_path / "results" / "example" / "slurm" / "example.sbatch"
    assert subprocess.run(["bash", "-n", str(path)]).returncode == 0
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    out = subprocess.run(["bash", str(path)], env=env, capture_output=True, text=True)
    assert out.returncode == 2
    assert f"submit it with: sbatch {path}" in out.stderr


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90", 5400),
        ("1:30", 90),
        ("04:00:00", 14400),
        ("1-12", 129600),
        ("1-0:30", 86400 + 1800),
        ("2-00:00:10", 172810),
        ("UNLIMITED", None),
    ],
)
def test_time_limits_read_as_slurm_reads_them(text: str, seconds: int | None) -> None:
    assert time_limit_seconds(text) == seconds


@pytest.mark.parametrize("text", ["4h", "", "0", "1:2:3:4", "-5"])
def test_a_time_limit_slurm_would_not_read_is_refused(text: str) -> None:
    with pytest.raises(SlurmError, match=r"--time .* give HH:MM:SS"):
        time_limit_seconds(text)


def test_the_signal_comes_in_time_for_short_limits() -> None:
    assert signal_lead(None) == 120
    assert signal_lead(4 * 3600) == 120
    assert signal_lead(120) == 30  # a 2-minute job is signalled after 90 s
    assert signal_lead(20) == 10


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        ({"mem_per_cpu": "2GB"}, "--mem-per-cpu '2GB' is not a SLURM memory size"),
        ({"cpus_per_node": 0}, "--cpus-per-node must be at least 1"),
        ({"partition": "a b"}, "--partition 'a b': SLURM names"),
        ({"time": "soon"}, "--time 'soon'"),
    ],
)
def test_bad_requests_are_refused_before_anything_is_written(
    tmp_path: Path, request_: dict[str, object], message: str
) -> None:
    job = make_job(tmp_path, **request_)
    with pytest.raises(SlurmError, match=re.escape(message)):
        write_script(job)
    assert not job.script_path.exists()


def test_a_path_an_sbatch_line_cannot_carry_is_refused(tmp_path: Path) -> None:
    job = make_job(tmp_path)
    job = SlurmJob(**{**job.__dict__, "results": tmp_path / "my results"})
    with pytest.raises(SlurmError, match=r"#SBATCH line cannot carry"):
        write_script(job)


def test_refusals_are_explained_with_the_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no sinfo here: the hints stand on their own
    script = tmp_path / "x.sbatch"
    nodes = explain_refusal(
        "allocation failure: Requested node configuration is not available",
        SlurmRequest(nodes=5, cpus_per_node=4, partition="cpu"),
        script,
    )
    assert "SLURM refused the job:\n  allocation failure: Requested node" in nodes
    assert "partition cpu cannot give 5 node(s) with 4 CPUs each: lower --nodes" in nodes
    assert nodes.endswith(f"Nothing was submitted; the script is kept at {script}")
    partition = explain_refusal(
        "sbatch: error: invalid partition specified: gpu", SlurmRequest(partition="gpu"), script
    )
    assert "there is no partition 'gpu' here; choose one with --partition" in partition
    account = explain_refusal(
        "sbatch: error: Batch job submission failed: Invalid account or account/partition "
        "combination specified",
        SlurmRequest(account="nope"),
        script,
    )
    assert "--account 'nope' is not one you may use" in account
    limit = explain_refusal(
        "sbatch: error: Batch job submission failed: Requested time limit is invalid (missing "
        "or exceeds some limit)",
        SlurmRequest(time="30-00:00:00"),
        script,
    )
    assert "--time 30-00:00:00 is more than partition (default) allows: lower it" in limit
    other = explain_refusal("sbatch: error: something new", SlurmRequest(), script)
    assert "fix what sbatch names above" in other


# --- through the CLI -----------------------------------------------------------------------


def test_cli_writes_the_script_and_says_how_to_submit_it(tmp_path: Path) -> None:
    job = digits_job(tmp_path / "d.toml", "cli-slurm")
    code, output = run_cli(
        ["slurm", str(job), "--nodes", "2", "--cpus-per-node", "4", "--time", "02:00:00"],
        cwd=tmp_path,
    )
    assert code == 0, output
    script = tmp_path / "results" / "cli-slurm" / "slurm" / "cli-slurm.sbatch"
    assert "cli-slurm: 2 cells: 0 done, 0 failed, 2 to run" in output
    assert f"Wrote {script}" in output and f"Submit it with: sbatch {script}" in output
    options = sbatch_options(script.read_text())
    assert options["--nodes"] == "2" and options["--cpus-per-task"] == "4"
    assert options["--time"] == "02:00:00" and options["--chdir"] == str(tmp_path)
    assert f"JOB={job}" in script.read_text()  # absolute paths: the job runs anywhere


def test_cli_refuses_bad_options_with_exit_code_2(tmp_path: Path) -> None:
    job = digits_job(tmp_path / "d.toml", "cli-bad")
    code, output = run_cli(["slurm", str(job), "--mem-per-cpu", "lots"], cwd=tmp_path)
    assert code == 2
    assert "--mem-per-cpu 'lots' is not a SLURM memory size" in " ".join(output.split())
    assert not (tmp_path / "results" / "cli-bad" / "slurm" / "cli-bad.sbatch").exists()


def test_cli_submit_without_sbatch_keeps_the_script_and_says_where_to_run(tmp_path: Path) -> None:
    job = digits_job(tmp_path / "d.toml", "cli-nosbatch")
    env = cli_env(PATH=str(tmp_path))  # no SLURM commands
    code, output = run_cli(["slurm", str(job), "--submit"], cwd=tmp_path, env=env)
    assert code == 2
    flat = " ".join(output.split())
    assert "sbatch is not on PATH: run this on a machine of the SLURM cluster" in flat
    assert (tmp_path / "results" / "cli-nosbatch" / "slurm" / "cli-nosbatch.sbatch").is_file()


# --- the Ray node launcher ---------------------------------------------------------------


def test_ray_nodes_take_the_memory_slurm_gave_them() -> None:
    assert slurm_memory_bytes({"SLURM_MEM_PER_NODE": "4000"}, cpus=4) == 4000 * MiB
    assert slurm_memory_bytes({"SLURM_MEM_PER_CPU": "2000"}, cpus=4) == 8000 * MiB
    assert slurm_memory_bytes({}, cpus=4) is None  # Ray measures the node then
    assert object_store_bytes(None) == 512 * MiB
    assert object_store_bytes(1000 * MiB) == 300 * MiB
    assert object_store_bytes(100 * MiB) == 80 * MiB  # Ray's minimum is 75 MiB


def test_every_ray_port_is_the_systems_choice_and_no_client_server_starts() -> None:
    parser = build_parser()
    head = ray_params(
        parser.parse_args(
            ["head", "--node-ip", "10.0.0.1", "--cpus", "8", "--run-dir", "/r", "--name", "a"]
        ),
        memory=8000 * MiB,
    )
    worker = ray_params(
        parser.parse_args(
            [
                *("worker", "--node-ip", "10.0.0.2", "--cpus", "8", "--run-dir", "/r"),
                *("--name", "b", "--address", "10.0.0.1:6379"),
            ]
        ),
        memory=None,
    )
    for params in (head, worker):
        ports = {k: v for k, v in params.items() if k.endswith("_port")}
        assert ports.pop("ray_client_server_port") is None
        assert set(ports.values()) == {0}, ports
        assert params["num_cpus"] == 8
    assert head["include_dashboard"] is False and "gcs_address" not in head
    assert head["memory"] == 8000 * MiB - head["object_store_memory"]
    assert worker["gcs_address"] == "10.0.0.1:6379" and "memory" not in worker


def test_a_node_stops_exactly_the_processes_it_marked(tmp_path: Path) -> None:
    mine = subprocess.Popen(["sleep", "60"], env={**os.environ, "CPUSWEEP_RAY_NODE": "abc"})
    other = subprocess.Popen(["sleep", "60"], env={**os.environ, "CPUSWEEP_RAY_NODE": "xyz"})
    try:
        deadline = time.monotonic() + 10
        while mine.pid not in marked_processes("CPUSWEEP_RAY_NODE", "abc"):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert other.pid not in marked_processes("CPUSWEEP_RAY_NODE", "abc")
        stop_processes(marked_processes("CPUSWEEP_RAY_NODE", "abc"), grace=5)
        assert mine.wait(timeout=5) == -signal.SIGTERM
        assert other.poll() is None
    finally:
        for process in (mine, other):
            process.kill()
            process.wait()


# --- the rows ----------------------------------------------------------------------------


def test_rows_record_the_slurm_job_and_node_and_null_outside_slurm(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from runner.job.grid import expand
    from runner.job.spec import load_spec
    from runner.run.cellrun import run_cell

    [cell] = expand(load_spec(digits_job(tmp_path / "d.toml", "rows", seeds=(0,)))).cells
    for name in ("SLURM_JOB_ID", "SLURMD_NODENAME"):
        monkeypatch.delenv(name, raising=False)
    outside = run_cell(cell.to_payload())["row"]
    assert outside["slurm_job_id"] is None and outside["slurm_node"] is None
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.setenv("SLURMD_NODENAME", "node017")
    inside = run_cell(cell.to_payload())["row"]
    assert (inside["slurm_job_id"], inside["slurm_node"]) == ("4242", "node017")
    assert inside["weights_sha256"] == outside["weights_sha256"]


def test_the_launcher_refuses_a_worker_without_the_heads_address() -> None:
    out = subprocess.run(
        [
            *(
                sys.executable,
                "-m",
                "runner.clusters.slurm_node",
                "worker",
                "--node-ip",
                "127.0.0.1",
            ),
            *("--cpus", "1", "--run-dir", "/nonexistent"),
        ],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 2 and "a worker node needs --address" in out.stderr
