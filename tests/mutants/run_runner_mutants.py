"""Plant plausible bugs in the runner's invariants, one at a time, and check that the tests
catch every one of them (issue 15: keys, overrides and excludes, checkpoints, threads, the
in-flight bound, atomic writes, --retry-failed).

Not collected by pytest (no test_ prefix). Run from anywhere:

    python tests/mutants/run_runner_mutants.py            # baseline + every mutant
    python tests/mutants/run_runner_mutants.py --only key_float_rounded exclude_before_overrides
    python tests/mutants/run_runner_mutants.py --tests tests/test_grid.py   # other suites
    python tests/mutants/run_runner_mutants.py --list

How each mutant is planted and run (a snapshot of the code, a fresh copy per mutant, a check
that the copy's mutated module is the one imported) is in common.py. In the copy, with
PYTHONPATH pointing at it and torch on one thread:

    python -m pytest -x -q -p no:cacheprovider tests/test_runner_invariants.py

Prints a table (mutant, killed, by which test, seconds). Exit status 1 if the baseline fails,
any mutant survives, or a mutant only breaks collection (an invalid mutant, not a kill).
"""

from __future__ import annotations

import sys

from common import Mutant, main

DEFAULT_TESTS = ("tests/test_runner_invariants.py",)

MUTANTS = [
    # 1. Float parameters rounded before they enter the cell key.
    Mutant(
        "key_float_rounded",
        "runner/job/cells.py",
        '            "values": dict(self.values),\n',
        '            "values": {\n'
        "                k: round(v, 3) if isinstance(v, float) else v\n"
        "                for k, v in self.values.items()\n"
        "            },\n",
        "Cell.identity: floats rounded to 3 decimals (lr 1e-4 and 2e-4 share a key)",
    ),
    Mutant(
        "param_float_rounded",
        "runner/job/params.py",
        "            return float(value)\n        return value\n",
        "            return float(value)\n"
        "        if self.kind is float:\n"
        "            return float(f'{value:.3g}')\n"
        "        return value\n",
        "Param.normalise: a float kept to 3 significant digits (1e-4 and 1.0000..1e-4 merge)",
    ),
    Mutant(
        "key_without_torch_threads",
        "runner/job/cells.py",
        '            "torch_threads": self.torch_threads,\n',
        "",
        "Cell.identity: the thread count is not part of the key",
    ),
    # 2. An override's `where` matched against the cell as earlier overrides left it.
    Mutant(
        "override_where_after_overrides",
        "runner/job/grid.py",
        "                if matches(before, override.where):\n",
        "                if matches(values, override.where):\n",
        "expand: `where` sees the changes of earlier overrides",
    ),
    Mutant(
        "override_first_wins",
        "runner/job/grid.py",
        "                    values.update(applied)\n",
        "                    values.update(\n"
        "                        {k: v for k, v in applied.items() if values[k] == before.get(k)}\n"
        "                    )\n",
        "expand: an earlier override's value is kept (the first, not the last, wins)",
    ),
    # 3. Excludes matched before the overrides.
    Mutant(
        "exclude_before_overrides",
        "runner/job/grid.py",
        "                if matches(values, clause):\n",
        "                if matches(before, clause):\n",
        "expand: [[exclude]] sees the cell before any override",
    ),
    Mutant(
        "match_any_listed_key",
        "runner/job/grid.py",
        "    return all(name in values and values[name] in accepted",
        "    return any(name in values and values[name] in accepted",
        "matches: one listed parameter is enough (any, not all)",
    ),
    # 4. A checkpoint of another torch version or format resumed.
    Mutant(
        "checkpoint_only_cell_compared",
        "runner/run/checkpoint.py",
        '        if saved["identity"] != identity:\n',
        '        if saved["identity"].get("cell") != identity["cell"]:\n',
        "CellCheckpoints._problem: only the cell is compared, not format or torch version",
    ),
    Mutant(
        "checkpoint_without_torch_version",
        "runner/run/checkpoint.py",
        '            "torch_version": str(torch.__version__),  # a str subclass would not load\n',
        "",
        "CellCheckpoints.identity: the torch version is not recorded",
    ),
    Mutant(
        "checkpoint_without_format",
        "runner/run/checkpoint.py",
        '            "format": FORMAT_VERSION,\n',
        "",
        "CellCheckpoints.identity: the checkpoint format is not recorded",
    ),
    # 5. The thread count applied only to the first cell of a reused process.
    Mutant(
        "threads_first_cell_only",
        "runner/run/threads.py",
        "    if torch.get_num_threads() != threads:\n        torch.set_num_threads(threads)\n",
        '    if not getattr(apply_threads, "applied", False):  # the process\'s first cell only\n'
        "        apply_threads.applied = True  # type: ignore[attr-defined]\n"
        "        torch.set_num_threads(threads)\n",
        "apply_threads: torch's threads set once per process, at its first cell",
    ),
    Mutant(
        "cell_without_apply_threads",
        "runner/run/cellrun.py",
        "    apply_threads(cell.torch_threads)\n",
        "",
        "_train_cell: the cell relies on the worker's set-up hook for its threads",
    ),
    # 6. The in-flight bound ignored.
    Mutant(
        "in_flight_unbounded",
        "runner/run/sweep.py",
        "                while queue and len(in_flight) < limit:\n",
        "                while queue:\n",
        "run_sweep: every cell submitted at once",
    ),
    Mutant(
        "in_flight_default_one_per_slot",
        "runner/run/sweep.py",
        "    limit = max_in_flight or 2 * executor.slots\n",
        "    limit = max_in_flight or executor.slots\n",
        "run_sweep: the default bound is the slots, not twice the slots",
    ),
    Mutant(
        "in_flight_not_passed",
        "runner/api/sweeps.py",
        "run_sweep(plan, store, runner, spec.resources.max_in_flight, listener)",
        "run_sweep(plan, store, runner, 0, listener)",
        "submit: [resources] max_in_flight never reaches the sweep loop",
    ),
    # 7. The atomic write not atomic.
    Mutant(
        "write_in_place",
        "runner/results/store.py",
        '    tmp = path.with_name(f".{path.name}.{os.getpid()}{TEMP_SUFFIX}")\n',
        "    tmp = path  # written where it will be read\n",
        "atomic_write: the file is written under its final name",
    ),
    Mutant(
        "write_without_fsync",
        "runner/results/store.py",
        "            f.flush()\n            os.fsync(f.fileno())\n        os.replace(tmp, path)\n",
        "            f.flush()\n        os.replace(tmp, path)\n",
        "atomic_write: renamed before its content is on disk",
    ),
    # 8. --retry-failed.
    Mutant(
        "retry_always",
        "runner/run/sweep.py",
        "if c.key not in ledger.done and (retry_failed or c.key not in ledger.failed)",
        "if c.key not in ledger.done",
        "make_plan: failed cells run again without --retry-failed",
    ),
    Mutant(
        "retry_never",
        "runner/run/sweep.py",
        "if c.key not in ledger.done and (retry_failed or c.key not in ledger.failed)",
        "if c.key not in ledger.done and c.key not in ledger.failed",
        "make_plan: --retry-failed ignored",
    ),
    Mutant(
        "retry_reruns_done",
        "runner/run/sweep.py",
        "if c.key not in ledger.done and (retry_failed or c.key not in ledger.failed)",
        "if retry_failed or (c.key not in ledger.done and c.key not in ledger.failed)",
        "make_plan: --retry-failed runs the finished cells again too",
    ),
]


if __name__ == "__main__":
    sys.exit(main(MUTANTS, DEFAULT_TESTS, __doc__.split("\n\n")[0]))
