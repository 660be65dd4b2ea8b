"""A sweep as a SLURM batch job: the sbatch script `python -m runner slurm` writes, and its
submission.

The script asks for whole nodes (or `--cpus-per-node` CPUs on each), one task per node, and
inside the allocation it

1. starts a Ray cluster: the head on the first node and one Ray node on every other node,
   each through srun, each offering the CPUs SLURM gave it (runner/clusters/slurm_node.py: every
   port the operating system's choice, a fresh random token per job, so two such jobs sharing a
   node never collide and no other Ray can join);
2. runs `python -m runner submit JOB.toml --address <head>` as the driver, on the first node;
3. stops its own Ray nodes, and only those, when the driver ends (never `ray stop`).

Time limits and pre-emption: the job asks SLURM for USR1 shortly before its time limit and is
requeueable. On USR1 the driver stops as on Ctrl-C (running cells keep their checkpoints); if
the allocation made progress (a cell finished or saved a checkpoint) the job requeues itself
and its next allocation resumes the sweep. A cancel or a pre-emption (TERM) stops it the same
way; SLURM requeues pre-empted jobs itself. The same `runner slurm ... --submit` run again
resumes too: the results folder is the sweep's state, as for any submit.

With a container image (`--container IMAGE.sif`, built from docker/cpusweep.def), every Ray
node and the driver run through `apptainer exec`, with the results folder, the data root and
the job file's folder bound at the same paths.

Library code: nothing here prints; errors are SlurmError (exit code 2 in the CLI).
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from runner.errors import CpusweepError
from runner.results.store import atomic_write_bytes

SIGNAL = "USR1"
SIGNAL_LEAD = 120  # seconds before the time limit; less for very short limits
SBATCH_TIMEOUT = 120  # seconds for sbatch to answer


class SlurmError(CpusweepError):
    """A SLURM request that cannot work, or that SLURM refused."""


@dataclass(frozen=True)
class SlurmRequest:
    """What the job asks SLURM for (each None: the cluster's default)."""

    nodes: int = 1
    cpus_per_node: int | None = None  # None: whole nodes (--exclusive), all their CPUs
    mem_per_cpu: str | None = None  # SLURM's syntax: 2000 (MB), 2G, ...
    time: str | None = None  # SLURM's syntax: minutes, HH:MM:SS, D-HH[:MM[:SS]], ...
    partition: str | None = None
    account: str | None = None


@dataclass(frozen=True)
class SlurmJob:
    """Everything the script needs; every path absolute."""

    name: str  # the sweep's name (job file)
    job_file: Path
    results: Path
    python: str  # the interpreter that runs the runner (this one), unless in a container
    workdir: Path
    request: SlurmRequest
    data_root: Path | None = None
    container: Path | None = None  # an Apptainer image (.sif)
    command: str = ""  # the `python -m runner slurm ...` command that wrote the script

    @property
    def script_path(self) -> Path:
        return self.results / "slurm" / f"{self.name}.sbatch"


# --- checking a request --------------------------------------------------------------------

_TIME_FORMATS = (
    # SLURM's --time formats (sbatch(1)), each as (pattern, field names).
    (r"(\d+)", ("m",)),
    (r"(\d+):(\d+)", ("m", "s")),
    (r"(\d+):(\d+):(\d+)", ("h", "m", "s")),
    (r"(\d+)-(\d+)", ("d", "h")),
    (r"(\d+)-(\d+):(\d+)", ("d", "h", "m")),
    (r"(\d+)-(\d+):(\d+):(\d+)", ("d", "h", "m", "s")),
)
_SECONDS = {"d": 86400, "h": 3600, "m": 60, "s": 1}


def time_limit_seconds(text: str) -> int | None:
    """Seconds of a --time value in any of SLURM's formats; None for no limit."""
    if text.strip().upper() in ("INFINITE", "UNLIMITED"):
        return None
    for pattern, fields in _TIME_FORMATS:
        match = re.fullmatch(pattern, text.strip())
        if match:
            seconds = sum(int(v) * _SECONDS[f] for v, f in zip(match.groups(), fields, strict=True))
            if seconds <= 0:
                break
            return seconds
    raise SlurmError(
        f"--time {text!r} is not a time limit SLURM understands: give HH:MM:SS (e.g. 04:00:00), "
        "D-HH:MM:SS (e.g. 1-12:00:00) or minutes (e.g. 90)"
    )


def signal_lead(time_limit: int | None) -> int:
    """How long before the limit the job asks for its signal: SIGNAL_LEAD, or a quarter of a
    shorter limit (a stopping driver needs seconds, SLURM sends it up to a minute early)."""
    if time_limit is None:
        return SIGNAL_LEAD
    return max(10, min(SIGNAL_LEAD, time_limit // 4))


def check_request(request: SlurmRequest) -> list[str]:
    """Every problem of the request, each naming the option and the fix."""
    problems = []
    if request.nodes < 1:
        problems.append(f"--nodes must be at least 1, got {request.nodes}")
    if request.cpus_per_node is not None and request.cpus_per_node < 1:
        problems.append(f"--cpus-per-node must be at least 1, got {request.cpus_per_node}")
    if request.mem_per_cpu is not None and not re.fullmatch(
        r"[1-9]\d*[KMGT]?", request.mem_per_cpu, re.IGNORECASE
    ):
        problems.append(
            f"--mem-per-cpu {request.mem_per_cpu!r} is not a SLURM memory size: give megabytes "
            "(e.g. 2000) or a number with K, M, G or T (e.g. 2G)"
        )
    if request.time is not None:
        try:
            time_limit_seconds(request.time)
        except SlurmError as exc:
            problems.append(str(exc))
    for option, value in (("--partition", request.partition), ("--account", request.account)):
        if value is not None and not re.fullmatch(r"[A-Za-z0-9_.,+-]+", value):
            problems.append(f"{option} {value!r}: SLURM names hold letters, digits and . _ - + ,")
    return problems


def _check_sbatch_path(what: str, path: Path) -> None:
    """A path that goes on an #SBATCH line, where SLURM reads no quotes or escapes."""
    text = str(path)
    if re.search(r"[\s%\"'\\]", text):
        raise SlurmError(
            f"{what} {text!r} holds a space, a quote, a backslash or %, which an #SBATCH line "
            "cannot carry: choose a path without them"
        )


# --- the script ----------------------------------------------------------------------------

_TEMPLATE = r"""#!/bin/bash
# cpusweep: the sweep "{{NAME}}" as a SLURM batch job, written by
#     {{COMMAND}}
# Submit it with `sbatch THIS-FILE`, or run that command with --submit; run again after the job
# ends, either resumes the sweep. Inside the allocation it starts a Ray cluster (the head on
# the first node, one Ray node per node through srun, each offering the CPUs SLURM gave it,
# every port picked by the OS, a fresh token per job), runs `python -m runner submit` as its
# driver, and stops its own Ray nodes at the end.
# {{LEAD}} s before the time limit SLURM sends USR1: the driver stops as on Ctrl-C (running
# cells keep their checkpoints) and the job requeues itself; its next allocation resumes.
# Output: {{RESULTS}}/slurm/slurm-<job id>.out; each Ray node's log in
# {{RESULTS}}/slurm/<job id>-<restart>/.
#SBATCH --job-name=cpusweep-{{NAME}}
#SBATCH --nodes={{NODES}}
#SBATCH --ntasks-per-node=1
{{RESOURCES}}#SBATCH --chdir={{WORKDIR}}
#SBATCH --output={{RESULTS}}/slurm/slurm-%j.out
#SBATCH --open-mode=append
#SBATCH --signal=B:{{SIGNAL}}@{{LEAD}}
#SBATCH --requeue

set -uo pipefail

JOB={{JOB_Q}}
RESULTS={{RESULTS_Q}}
SCRIPT={{SCRIPT_Q}}
PYTHON=({{PYTHON}})  # runs the runner (and Ray) on every node
SUBMIT_ARGS=({{SUBMIT_ARGS}})
export PYTHONUNBUFFERED=1

say() { printf '[cpusweep %s] %s\n' "$(date '+%F %T')" "$*"; }

if [ -z "${SLURM_JOB_ID:-}" ]; then
    echo "This is a SLURM batch script: submit it with: sbatch $SCRIPT" >&2
    exit 2
fi
RUN="$RESULTS/slurm/$SLURM_JOB_ID-${SLURM_RESTART_COUNT:-0}"  # this allocation's Ray logs
mkdir -p "$RUN" || exit 2
RAY_TMP="/tmp/cpusweep-${SLURM_CLUSTER_NAME:-slurm}-$SLURM_JOB_ID"  # short: Ray's socket paths
touch "$RUN/started"
say "job $SLURM_JOB_ID (restart ${SLURM_RESTART_COUNT:-0}) on $SLURM_JOB_NODELIST; Ray logs in $RUN"

# The pre-limit signal, a cancel or a pre-emption: the driver stops as on Ctrl-C.
SIGNALLED=""
DRIVER=""
on_signal() {
    SIGNALLED=$1
    say "$1: stopping the sweep; running cells keep their checkpoints"
    if [ -n "$DRIVER" ]; then kill -TERM "$DRIVER" 2>/dev/null; fi
}
trap 'on_signal {{SIGNAL}}' {{SIGNAL}}
trap 'on_signal TERM' TERM
trap 'on_signal INT' INT

# The nodes, the CPUs SLURM gave each ("4(x2),2" -> 4 4 2), and where SLURM reaches each.
mapfile -t NODES < <(scontrol show hostnames "$SLURM_JOB_NODELIST")
CPUS=()
repeat='^([0-9]+)\(x([0-9]+)\)$'
IFS=, read -ra counts <<< "$SLURM_JOB_CPUS_PER_NODE"
for count in "${counts[@]}"; do
    if [[ $count =~ $repeat ]]; then
        for ((i = 0; i < BASH_REMATCH[2]; i++)); do CPUS+=("${BASH_REMATCH[1]}"); done
    else
        CPUS+=("$count")
    fi
done
node_ip() {
    local addr
    addr=$(scontrol show node "$1" -o | grep -o 'NodeAddr=[^ ]*' | cut -d= -f2)
    getent ahostsv4 "${addr:-$1}" | awk 'NR == 1 { print $1 }'
}
HEAD=${NODES[0]}
HEAD_IP=$(node_ip "$HEAD")
if [ -z "$HEAD_IP" ] || [ ${#CPUS[@]} -ne ${#NODES[@]} ]; then
    say "cannot tell the address of $HEAD or the CPUs of ${NODES[*]} ($SLURM_JOB_CPUS_PER_NODE)"
    exit 1
fi
# Every node on loopback (one machine): Ray keeps all its servers on 127.0.0.1.
case "$HEAD_IP" in
    127.*) export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 ;;
    *) export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=1 ;;
esac
# This job's own token: every node and the driver present it; it is written nowhere.
export RAY_AUTH_MODE=token
RAY_AUTH_TOKEN=$(od -An -N32 -tx1 /dev/urandom | tr -d ' \n')
export RAY_AUTH_TOKEN
export RAY_USAGE_STATS_ENABLED=0

SRUNS=()
start_node() {  # ROLE NODE CPUS [HEAD ADDRESS]
    srun --nodes=1 --ntasks=1 --cpus-per-task="$3" --nodelist="$2" --kill-on-bad-exit=0 \
        --output="$RUN/ray-$2.log" \
        "${PYTHON[@]}" -m runner.clusters.slurm_node "$1" --node-ip "$(node_ip "$2")" --cpus "$3" \
        --name "$2" --run-dir "$RUN" --temp-dir "$RAY_TMP" \
        ${4:+--address "$4"} &
    SRUNS+=($!)
}
alive() { kill -0 "$1" 2>/dev/null; }
stop_ray() {  # each Ray node stops its own processes, and only those
    if [ ${#SRUNS[@]} -eq 0 ]; then return; fi
    touch "$RUN/stop"
    local pid waited=0 running=1
    while [ $running = 1 ] && [ $waited -lt 60 ]; do
        running=0
        for pid in "${SRUNS[@]}"; do alive "$pid" && running=1; done
        if [ $running = 1 ]; then sleep 1; waited=$((waited + 1)); fi
    done
    for pid in "${SRUNS[@]}"; do kill -TERM "$pid" 2>/dev/null; done  # srun ends its step
    wait "${SRUNS[@]}" 2>/dev/null
    say "Ray stopped"
}
wait_until() {  # SECONDS COMMAND...: 1 on time-out or a signal
    local deadline=$((SECONDS + $1))
    shift
    until "$@"; do
        if [ -n "$SIGNALLED" ] || [ $SECONDS -ge $deadline ]; then return 1; fi
        sleep 0.5
    done
}
head_answered() { [ -s "$RUN/head-address" ] || ! alive "${SRUNS[0]}"; }
joined() { ls "$RUN" | grep -c '^ready-'; }
all_joined() { [ "$(joined)" -ge ${#NODES[@]} ]; }

start_node head "$HEAD" "${CPUS[0]}"
wait_until 300 head_answered
if [ ! -s "$RUN/head-address" ]; then
    say "the Ray head did not start on $HEAD: see $RUN/ray-$HEAD.log"
    stop_ray
    exit 1
fi
ADDRESS=$(cat "$RUN/head-address")
for ((n = 1; n < ${#NODES[@]}; n++)); do
    start_node worker "${NODES[n]}" "${CPUS[n]}" "$ADDRESS"
done
wait_until 300 all_joined || say "warning: only $(joined) of ${#NODES[@]} Ray nodes joined"
say "Ray cluster at $ADDRESS: $(joined) node(s), CPUs ${CPUS[*]}"

CODE=130
if [ -z "$SIGNALLED" ]; then
    "${PYTHON[@]}" -m runner submit "$JOB" "${SUBMIT_ARGS[@]}" --address "$ADDRESS" &
    DRIVER=$!
    if [ -n "$SIGNALLED" ]; then kill -TERM "$DRIVER" 2>/dev/null; fi
    while :; do
        wait "$DRIVER"
        CODE=$?
        alive "$DRIVER" || break  # else a signal interrupted the wait
    done
fi
stop_ray

if [ "$CODE" = 130 ] && [ "$SIGNALLED" = {{SIGNAL}} ]; then
    progress=$(find "$RESULTS/cells" "$RESULTS/checkpoints" -type f -newer "$RUN/started" \
        \( -name '*.parquet' -o -name '*.pt' \) -print -quit 2>/dev/null)
    if [ -n "$progress" ]; then
        trap '' TERM  # a requeue ends this allocation with TERM: all is done already
        if scontrol requeue "$SLURM_JOB_ID"; then
            say "requeued job $SLURM_JOB_ID: its next allocation resumes the sweep"
            exit "$CODE"
        fi
        say "scontrol requeue failed; resume with: sbatch $SCRIPT"
    else
        say "not requeued: no cell finished or saved a checkpoint in this allocation; give" \
            "the job a longer --time or checkpoint more often ([resources] checkpoint_every)"
    fi
fi
say "driver exit code $CODE. Status: python -m runner status $RESULTS"
exit "$CODE"
"""


def _python_command(job: SlurmJob) -> list[str]:
    """How every node and the driver run Python: this interpreter, or the container's."""
    if job.container is None:
        return [job.python]
    binds = [job.results, job.job_file.parent, job.workdir]
    if job.data_root is not None:
        binds.append(job.data_root)
    unique = sorted({str(p) for p in binds})
    return ["apptainer", "exec", "--bind", ",".join(unique), str(job.container), "python"]


def render_script(job: SlurmJob) -> str:
    """The sbatch script's text."""
    request = job.request
    limit = time_limit_seconds(request.time) if request.time else None
    resources = []
    if request.cpus_per_node is None:
        resources.append("--exclusive")
    else:
        resources.append(f"--cpus-per-task={request.cpus_per_node}")
    for option, value in (
        ("mem-per-cpu", request.mem_per_cpu),
        ("time", request.time),
        ("partition", request.partition),
        ("account", request.account),
    ):
        if value is not None:
            resources.append(f"--{option}={value}")
    submit_args = ["--results", str(job.results)]
    if job.data_root is not None:
        submit_args += ["--data-root", str(job.data_root)]
    values = {
        "NAME": job.name,
        "COMMAND": " ".join((job.command or "python -m runner slurm").splitlines()),
        "RESULTS": str(job.results),
        "WORKDIR": str(job.workdir),
        "NODES": str(request.nodes),
        "RESOURCES": "".join(f"#SBATCH {line}\n" for line in resources),
        "SIGNAL": SIGNAL,
        "LEAD": str(signal_lead(limit)),
        "JOB_Q": shlex.quote(str(job.job_file)),
        "RESULTS_Q": shlex.quote(str(job.results)),
        "SCRIPT_Q": shlex.quote(str(job.script_path)),
        "PYTHON": shlex.join(_python_command(job)),
        "SUBMIT_ARGS": shlex.join(submit_args),
    }
    text = _TEMPLATE
    for key, value in values.items():
        text = text.replace("{{" + key + "}}", value)
    assert "{{" not in text, "unfilled placeholder in the sbatch template"
    return text


def write_script(job: SlurmJob) -> Path:
    """Check the job's request and paths, write its sbatch script (atomically) into the
    results folder, and return the script's path."""
    problems = check_request(job.request)
    if problems:
        raise SlurmError("; ".join(problems))
    _check_sbatch_path("the results folder", job.results)
    _check_sbatch_path("the working folder", job.workdir)
    if job.container is not None:
        if not job.container.is_file():
            raise SlurmError(
                f"--container {job.container}: no such image file; build it with "
                "`apptainer build cpusweep.sif docker/cpusweep.def` (see docs/clusters.md, SLURM "
                "section) or give its path"
            )
        if job.data_root is not None and not job.data_root.is_dir():
            raise SlurmError(
                f"--data-root {job.data_root} does not exist, and Apptainer binds only existing "
                "folders into the container: create it, or fix --data-root"
            )
        if "," in "".join(str(p) for p in (job.results, job.job_file, job.data_root or "")):
            raise SlurmError("paths bound into the container cannot hold a comma: rename them")
    path = job.script_path
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SlurmError(f"cannot create {path.parent}: {exc.strerror or exc}") from None
    atomic_write_bytes(path, render_script(job).encode("utf-8"))
    return path


# --- submitting ----------------------------------------------------------------------------


def _run(command: list[str]) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=SBATCH_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise SlurmError(
            f"`{shlex.join(command)}` did not answer within {SBATCH_TIMEOUT} s: is SLURM's "
            "controller reachable from here (`sinfo`)?"
        ) from None


def _partitions() -> tuple[list[str], str | None]:
    """The partition names and the default one, from sinfo (empty if it cannot tell)."""
    sinfo = shutil.which("sinfo")
    if sinfo is None:
        return [], None
    out = _run([sinfo, "--noheader", "--format=%P"])
    names, default = [], None
    for line in out.stdout.split():
        name = line.rstrip("*")
        if name not in names:
            names.append(name)
        if line.endswith("*"):
            default = name
    return names, default


def _partition_size(partition: str) -> str | None:
    """'2 node(s): 1 CPUs and 2000 MB each' as sinfo tells it, None if it cannot."""
    sinfo = shutil.which("sinfo")
    if sinfo is None:
        return None
    out = _run([sinfo, "--noheader", f"--partition={partition}", "--format=%D %c %m"])
    groups = []
    total = 0
    for line in out.stdout.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0].isdigit():
            total += int(parts[0])
            groups.append(f"{parts[0]} with {parts[1]} CPUs and {parts[2]} MB")
    if not groups:
        return None
    return f"{total} node(s): " + ", ".join(groups)


def explain_refusal(message: str, request: SlurmRequest, script: Path) -> str:
    """sbatch's own words, what they mean for this request, and the fix."""
    text = message.strip() or "(no message)"
    lower = text.lower()
    names, default = _partitions()
    partition = request.partition or default
    if "invalid partition" in lower or "no partition specified" in lower:
        choices = ", ".join(names) or "see `sinfo -s`"
        hint = (
            f"there is no partition {request.partition!r} here"
            if request.partition
            else "no default partition: name one"
        ) + f"; choose one with --partition (partitions: {choices})"
    elif (
        "node configuration is not available" in lower
        or "node count specification invalid" in lower
        or "more processors requested than permitted" in lower
    ):
        size = _partition_size(partition) if partition else None
        asked = f"{request.nodes} node(s)"
        if request.cpus_per_node:
            asked += f" with {request.cpus_per_node} CPUs each"
        if request.mem_per_cpu:
            asked += f" and {request.mem_per_cpu} per CPU"
        hint = (
            f"partition {partition or '(default)'} cannot give {asked}"
            + (f"; it has {size}" if size else "")
            + ": lower --nodes (or --cpus-per-node, --mem-per-cpu), or choose another "
            "--partition (`sinfo` lists them)"
        )
    elif "account" in lower:
        hint = (
            f"--account {request.account!r} is not one you may use"
            if request.account
            else "this cluster needs --account"
        ) + " (`sacctmgr show associations user=$USER` lists yours)"
    elif "time limit" in lower:
        hint = (
            f"--time {request.time} is more than partition {partition or '(default)'} allows: "
            "lower it (`sinfo -o '%P %l'` shows each partition's limit)"
        )
    elif "memory" in lower:
        hint = "lower --mem-per-cpu (`sinfo -o '%P %m'` shows each partition's memory per node)"
    else:
        hint = "fix what sbatch names above, then run the same command again"
    return (
        f"SLURM refused the job:\n  {text}\n{hint}. Nothing was submitted; the script is "
        f"kept at {script}"
    )


def submit_script(script: Path, request: SlurmRequest) -> str:
    """Check the script with `sbatch --test-only` (a request the cluster can never satisfy
    is refused there instead of waiting in the queue for ever), submit it, and return the job
    id. SlurmError, with sbatch's message and the fix, if SLURM refuses it."""
    sbatch = shutil.which("sbatch")
    if sbatch is None:
        raise SlurmError(
            "sbatch is not on PATH: run this on a machine of the SLURM cluster (a login node), "
            f"or copy the script there and run `sbatch {script}`"
        )
    for command in ([sbatch, "--test-only", str(script)], [sbatch, "--parsable", str(script)]):
        out = _run(command)
        if out.returncode != 0:
            raise SlurmError(explain_refusal(out.stderr + out.stdout, request, script))
    job_id = out.stdout.strip().split(";")[0]
    if not job_id.isdigit():
        raise SlurmError(f"sbatch answered {out.stdout.strip()!r}, not a job id")
    return job_id
