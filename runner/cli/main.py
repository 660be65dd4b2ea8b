"""`python -m runner`: the argument parser and the entry point. Each verb is one call into the
Python API (runner.api) or a library module, rendered by the verbs' modules:
sweep_verbs (submit, slurm, plan), folder_verbs (status, report, export), verify_verb,
data_verbs and bench_verbs. This package is the only one that prints.

Exit codes: 0 all good; 1 some cells failed; 2 a problem for the user to fix (bad job file,
missing data, unusable results folder, Ray unreachable); 130 interrupted (resumable).
"""

from __future__ import annotations

import argparse
import logging
import signal
from typing import Any

from rich.logging import RichHandler
from rich.markup import escape

from runner.cli.bench_verbs import cmd_bench
from runner.cli.data_verbs import cmd_data_list, cmd_data_prepare
from runner.cli.folder_verbs import cmd_export, cmd_report, cmd_status
from runner.cli.output import console, err_console, resume_command
from runner.cli.sweep_verbs import cmd_plan, cmd_slurm, cmd_submit
from runner.cli.verify_verb import cmd_verify
from runner.errors import CpusweepError

__all__ = ["build_parser", "console", "main"]


def _csv(kind: type) -> Any:
    def parse(text: str) -> list[Any]:
        try:
            return [kind(part) for part in text.split(",") if part.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list: {text!r}") from None

    return parse


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def add_selection_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--only",
        action="append",
        metavar="PARAM=V[,V]",
        help="only the job's cells with one of these values (repeatable), e.g. method=standard",
    )
    p.add_argument(
        "--set",
        action="append",
        metavar="PARAM=VALUE",
        help="this value for every cell, as new cells (repeatable), e.g. epochs=1",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m runner",
        description="Run resumable sweeps of sampling-based training methods on CPUs.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log more")
    # -v after the command too (`submit JOB -v`); SUPPRESS keeps the top-level one otherwise.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="log more"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser(
        "submit", help="run a job's cells that are not done yet (the resume)", parents=[common]
    )
    p.add_argument("job", help="job file (TOML)")
    p.add_argument("--results", help="results folder (default: results/<name>)")
    p.add_argument(
        "--data-root",
        help="dataset folder (default: $CPUSWEEP_DATA_ROOT, else ~/.cache/cpusweep/data)",
    )
    p.add_argument("--cpus", type=_positive_int, help="CPUs of the local Ray (default: all)")
    p.add_argument(
        "--address", help="join this Ray cluster (default: $RAY_ADDRESS, else start a local Ray)"
    )
    p.add_argument(
        "--executor",
        choices=("ray", "serial"),
        default="ray",
        help="ray (default) or serial: the same cells, in this process",
    )
    p.add_argument("--retry-failed", action="store_true", help="re-run cells that failed")
    p.add_argument(
        "--rerun-stopped",
        action="store_true",
        help="re-run cells a time budget (max_cell_minutes) stopped, under the budget now",
    )
    add_selection_arguments(p)
    p.set_defaults(func=cmd_submit)

    p = sub.add_parser(
        "slurm",
        help="write (and --submit) an sbatch script that runs the sweep on a SLURM cluster",
        parents=[common],
    )
    p.add_argument("job", help="job file (TOML)")
    p.add_argument("--nodes", type=_positive_int, default=1, help="nodes (default: 1)")
    p.add_argument(
        "--cpus-per-node",
        type=_positive_int,
        help="CPUs per node (default: whole nodes, every CPU of each)",
    )
    p.add_argument("--mem-per-cpu", help="memory per CPU, SLURM's syntax (e.g. 2000, 2G)")
    p.add_argument("--time", help="time limit, SLURM's syntax (e.g. 04:00:00, 1-00:00:00)")
    p.add_argument("--partition", help="partition (default: the cluster's default)")
    p.add_argument("--account", help="account to charge")
    p.add_argument("--results", help="results folder (default: results/<name>)")
    p.add_argument(
        "--data-root",
        help="dataset folder (default: $CPUSWEEP_DATA_ROOT, else ~/.cache/cpusweep/data)",
    )
    p.add_argument(
        "--container",
        metavar="IMAGE.sif",
        help="run every Ray node and the driver in this Apptainer image (docker/cpusweep.def)",
    )
    p.add_argument(
        "--submit", action="store_true", help="also submit it with sbatch; prints the job id"
    )
    p.set_defaults(func=cmd_slurm)

    p = sub.add_parser(
        "plan", help="show the cells and what is done, without running", parents=[common]
    )
    p.add_argument("job")
    p.add_argument("--results")
    p.add_argument("--all", action="store_true", help="list every cell")
    p.add_argument("--bench", help="a `runner bench --json` file, for time estimates")
    p.add_argument(
        "--cpus", type=_positive_int, help="CPUs the sweep will have (default: this machine's)"
    )
    add_selection_arguments(p)
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser(
        "status", help="what a results folder holds: done, failed, to run", parents=[common]
    )
    p.add_argument("results_dir")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser(
        "report",
        help="tables, figures and a page from a results folder (and Parquet files)",
        parents=[common],
    )
    p.add_argument("results_dir")
    p.add_argument("--out", help="output folder (default: RESULTS_DIR/report)")
    p.add_argument(
        "--compare-paper",
        action="store_true",
        help="put the paper's published numbers beside ours, with the difference",
    )
    p.add_argument(
        "--include-stopped",
        action="store_true",
        help="count cells that stopped early (diverged, time budget) in the means",
    )
    p.set_defaults(func=cmd_report)

    p = sub.add_parser(
        "export",
        help="export a results folder to MLflow (runs) or TensorBoard (event files)",
        parents=[common],
    )
    p.add_argument("results_dir")
    p.add_argument("--to", choices=("mlflow", "tensorboard"), required=True)
    p.add_argument(
        "--tracking-uri",
        help="MLflow tracking URI (default: sqlite:///RESULTS_DIR/mlflow/mlflow.db)",
    )
    p.add_argument("--experiment", help="MLflow experiment (default: the job's name)")
    p.add_argument("--out", help="TensorBoard log folder (default: RESULTS_DIR/tensorboard)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser(
        "verify",
        help="re-run finished cells and compare them with their rows, bit for bit",
        parents=[common],
    )
    p.add_argument("results_dir")
    p.add_argument(
        "--sample",
        type=_positive_int,
        help="re-run this many cells, chosen at random (default: all)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the --sample choice (default 0)")
    p.add_argument(
        "--executor",
        choices=("ray", "serial"),
        default="ray",
        help="ray (default) or serial: the same cells, in this process",
    )
    p.add_argument("--cpus", type=_positive_int, help="CPUs of the local Ray (default: all)")
    p.add_argument(
        "--address", help="join this Ray cluster (default: $RAY_ADDRESS, else start a local Ray)"
    )
    p.add_argument(
        "--data-root",
        help="dataset folder (default: $CPUSWEEP_DATA_ROOT, else ~/.cache/cpusweep/data)",
    )
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser(
        "bench", help="time each method against a plain PyTorch loop", parents=[common]
    )
    p.add_argument(
        "--methods",
        type=_csv(str),
        help="comma-separated registry names, each optionally with hyperparameters set as "
        "NAME:PARAM=VALUE[:PARAM=VALUE] (default: every method, and mc_approx at k = 10 "
        "beside its default sampling ratio 0.1)",
    )
    p.add_argument("--depths", type=_csv(int), default=[3, 7], help="comma-separated")
    p.add_argument("--batch-sizes", type=_csv(int), default=[1, 20], help="comma-separated")
    p.add_argument("--width", type=int, default=1000)
    p.add_argument(
        "--repeats",
        type=int,
        default=4,
        help="timed repeats, alternately in forward and reverse order",
    )
    p.add_argument(
        "--examples-batch1",
        type=int,
        default=1000,
        help="training examples per timed epoch at batch 1",
    )
    p.add_argument(
        "--examples-batched",
        type=int,
        default=10000,
        help="training examples per timed epoch at larger batches",
    )
    p.add_argument("--json", help="write the records to this file")
    p.add_argument(
        "--sweep",
        action="store_true",
        help="instead: the runner's throughput on a sweep of short cells",
    )
    p.add_argument(
        "--pinning",
        action="store_true",
        help="instead: that sweep with and without [resources] pin_cores",
    )
    p.add_argument("--cells", type=int, default=40, help="cells of the --sweep benchmark")
    p.add_argument(
        "--cell-seconds", type=float, default=5.0, help="about how long each --sweep cell trains"
    )
    p.add_argument("--cpus", type=_positive_int, help="CPUs of the local Ray (default: all)")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("data", help="list and prepare datasets in the data root", parents=[common])
    data = p.add_subparsers(dest="data_command", required=True)
    data_root_help = "dataset folder (default: $CPUSWEEP_DATA_ROOT, else ~/.cache/cpusweep/data)"
    p = data.add_parser(
        "list", help="official files (sizes, sha256) and prepared splits", parents=[common]
    )
    p.add_argument("--data-root", help=data_root_help)
    p.set_defaults(func=cmd_data_list)
    p = data.add_parser(
        "prepare", help="fetch (where allowed) and convert datasets", parents=[common]
    )
    p.add_argument("names", nargs="+", metavar="NAME", help="dataset name(s)")
    p.add_argument("--data-root", help=data_root_help)
    p.add_argument("--split-seed", type=int, default=0, help="validation split seed (default 0)")
    p.add_argument(
        "--skip-checksums",
        action="store_true",
        help="do not compare with published checksums (files you made or re-encoded "
        "yourself); sizes and structure are still checked",
    )
    p.set_defaults(func=cmd_data_prepare)
    return parser


def process_main() -> int:
    """`python -m runner`: the whole command, its summary included, under the sweep's signal
    handling (a second Ctrl-C or a `kill` while a stopped sweep says how to resume is
    acknowledged, not obeyed); once all is said, signals are ignored, so that none turns the
    exit code into a death by that signal."""
    from runner.run.sweep import interrupt_handling

    with interrupt_handling(afterwards=signal.SIG_IGN):
        return main()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(message)s",
        handlers=[RichHandler(console=err_console, show_path=False)],
    )
    try:
        code: int = args.func(args)
        return code
    except CpusweepError as exc:
        err_console.print(f"[red]error:[/] {escape(str(exc))}")
        return 2
    except KeyboardInterrupt:
        err_console.print(f"[yellow]Interrupted.[/] Resume with: {escape(resume_command())}")
        return 130
