"""What the mutants scripts share: snapshot the code, plant one mutant at a time in a fresh
copy, run test files against it, and print which mutants the tests kill.

Not collected by pytest. Used by run_method_mutants.py (mistakes in the methods' math) and
run_runner_mutants.py (bugs in the runner's invariants); each defines its `MUTANTS` and its
default test files and calls `main`.

The repository's methods/, runner/, jobs/ and tests/ (and pyproject.toml, for pytest's
settings) are snapshotted once into a temporary directory, so files another engineer edits
meanwhile cannot mix into a run. Each run (the unmutated baseline first, then each mutant) gets
a fresh copy of that snapshot; a mutant is an exact text replacement in the copy, and the
script stops with an error naming the mutant if its text is not found exactly once. The copy's
own modules must be the ones imported: before each run, a Python process with the same
environment imports the mutated module and checks that it comes from the copy and contains the
mutation (the baseline row prints where `methods` was imported from). Then, in the copy, with
PYTHONPATH pointing at it and torch on one thread:

    python -m pytest -x -q -p no:cacheprovider TEST_FILES...

A table follows (mutant, killed, by which test, seconds). Exit status 1 if the baseline fails,
any mutant survives, or a mutant only breaks collection (an invalid mutant, not a kill).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
COPIED = ("methods", "runner", "jobs", "tests")
COPIED_FILES = ("pyproject.toml",)
TIMEOUT = 1800  # seconds per pytest run


@dataclass(frozen=True)
class Mutant:
    name: str
    path: str  # relative to the repository
    old: str  # must occur exactly once in the file
    new: str
    what: str


def snapshot(into: Path) -> None:
    """Copy what a run needs, once (bytecode caches left out)."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache", ".hypothesis")
    for name in COPIED:
        shutil.copytree(REPO / name, into / name, ignore=ignore)
    for name in COPIED_FILES:
        shutil.copy2(REPO / name, into / name)


def replaced(mutant: Mutant, text: str) -> str:
    """`text` with the mutation applied; stops, naming the mutant, unless the text to replace
    occurs exactly once."""
    found = text.count(mutant.old)
    if found != 1:
        raise SystemExit(
            f"mutant {mutant.name}: the text to replace occurs {found} times in {mutant.path} "
            f"(expected exactly once); has the source changed?\n--- text ---\n{mutant.old}"
        )
    return text.replace(mutant.old, mutant.new)


def apply(mutant: Mutant, root: Path) -> None:
    path = root / mutant.path
    path.write_text(replaced(mutant, path.read_text()))


def environment(root: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(root)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[var] = "1"  # the machine is shared: one core per run
    return env


def check_imports(root: Path, mutant: Mutant | None) -> str:
    """Import the (mutated) module exactly as the test run will, and check that it is the
    copy's, with the mutation in it. Returns where `methods` was imported from."""
    module = "methods" if mutant is None else mutant.path[:-3].replace("/", ".")
    code = (
        "import importlib, sys\n"
        "import methods, runner\n"
        f"m = importlib.import_module({module!r})\n"
        "print(methods.__file__)\n"
        "print(runner.__file__)\n"
        "print(m.__file__)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=root,
        env=environment(root),
        capture_output=True,
        text=True,
        timeout=300,
    )
    if done.returncode != 0:
        label = "baseline" if mutant is None else f"mutant {mutant.name}"
        raise SystemExit(f"{label}: importing {module} failed:\n{done.stderr}")
    files = [Path(line).resolve() for line in done.stdout.split()]
    for file in files:
        if root.resolve() not in file.parents:
            raise SystemExit(f"{file} was imported instead of the copy's module under {root}")
    if mutant is not None and mutant.new not in files[-1].read_text():
        raise SystemExit(f"mutant {mutant.name}: the imported {files[-1]} lacks the mutation")
    return str(files[0])


FAILED = re.compile(r"^(FAILED|ERROR) (\S+)", re.MULTILINE)


def run_tests(root: Path, tests: list[str], every: bool) -> tuple[int, str, float]:
    stop = [] if every else ["-x"]
    command = [sys.executable, "-m", "pytest", *stop, "-q", "-p", "no:cacheprovider", *tests]
    start = time.perf_counter()
    done = subprocess.run(
        command,
        cwd=root,
        env=environment(root),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    return done.returncode, done.stdout + done.stderr, time.perf_counter() - start


def one_run(
    snap: Path, mutant: Mutant | None, tests: list[str], verbose: bool, every: bool
) -> tuple[str, str, float, str]:
    """(outcome, by which test (every failing test with `every`), seconds, where methods
    was imported from)."""
    with tempfile.TemporaryDirectory(prefix="mutant-") as tmp:
        root = Path(tmp)
        for name in (*COPIED, *COPIED_FILES):
            source = snap / name
            if source.is_dir():
                shutil.copytree(source, root / name)
            else:
                shutil.copy2(source, root / name)
        if mutant is not None:
            apply(mutant, root)
        imported = check_imports(root, mutant)
        code, output, seconds = run_tests(root, tests, every)
    if verbose or code not in (0, 1):
        print(output[-3000:], file=sys.stderr)
    failures = FAILED.findall(output)
    first = failures[0][1] if failures else ""
    if every:  # every failing test, file names shortened
        first = ", ".join(test.split("/")[-1].replace(".py::", "::") for _, test in failures)
    if code == 0:
        outcome = "no"
    elif code == 1 and failures and failures[0][0] == "FAILED":
        outcome = "yes"
    else:  # collection errors, usage errors, crashes: not a kill by a test
        outcome = f"ERROR (pytest exit {code})"
    return outcome, first, seconds, imported


def main(mutants: Sequence[Mutant], default_tests: Sequence[str], description: str) -> int:
    """The command line of a mutants script: its options, the runs, the table. Returns the
    exit status (0: the baseline passes and every mutant is killed)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--only", nargs="+", metavar="NAME", help="run only these mutants")
    parser.add_argument("--tests", nargs="+", default=list(default_tests), help="test files")
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    parser.add_argument("--no-baseline", action="store_true", help="skip the unmutated run")
    parser.add_argument("--verbose", action="store_true", help="print pytest's output")
    parser.add_argument(
        "--every-test",
        action="store_true",
        help="run without -x and list every test that fails (slower): shows which tests "
        "catch each mutant on their own",
    )
    args = parser.parse_args()
    if args.list:
        for m in mutants:
            print(f"{m.name:38} {m.path:24} {m.what}")
        return 0
    chosen = list(mutants)
    if args.only:
        unknown = set(args.only) - {m.name for m in mutants}
        if unknown:
            raise SystemExit(f"unknown mutants: {sorted(unknown)}")
        chosen = [m for m in mutants if m.name in args.only]

    rows: list[tuple[str, str, str, float]] = []
    ok = True
    with tempfile.TemporaryDirectory(prefix="mutant-snapshot-") as tmp:
        snap = Path(tmp)
        snapshot(snap)
        for mutant in chosen:  # every mutation must apply before anything runs
            replaced(mutant, (snap / mutant.path).read_text())
        print(f"tests: {' '.join(args.tests)}{'' if args.every_test else ' (-x)'}", flush=True)
        if not args.no_baseline:
            outcome, first, seconds, imported = one_run(
                snap, None, args.tests, args.verbose, args.every_test
            )
            print(f"baseline imports methods from {imported} (a temporary copy)", flush=True)
            passed = outcome == "no"
            ok &= passed
            rows.append(("(baseline, unmutated)", "passes" if passed else "FAILS", first, seconds))
            print(f"  baseline: {rows[-1][1]} {first} ({seconds:.1f} s)", flush=True)
        survivors = []
        for mutant in chosen:
            outcome, first, seconds, _ = one_run(
                snap, mutant, args.tests, args.verbose, args.every_test
            )
            if outcome != "yes":
                survivors.append(mutant.name)
            rows.append((mutant.name, outcome, first, seconds))
            print(f"  {mutant.name}: killed {outcome} {first} ({seconds:.1f} s)", flush=True)
    ok &= not survivors

    name_width = max(len(r[0]) for r in rows)
    test_width = max(len("by test"), *(len(r[2]) for r in rows))
    print()
    print(f"{'mutant':{name_width}}  {'killed':7}  {'by test':{test_width}}  seconds")
    print(f"{'-' * name_width}  {'-' * 7}  {'-' * test_width}  -------")
    for name, outcome, first, seconds in rows:
        print(f"{name:{name_width}}  {outcome:7}  {first or '-':{test_width}}  {seconds:7.1f}")
    print()
    if survivors:
        print(f"NOT KILLED: {', '.join(survivors)}")
    print("OK: the baseline passes and every mutant is killed" if ok else "FAILED")
    return 0 if ok else 1
