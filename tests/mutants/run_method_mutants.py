"""Plant plausible mathematical mistakes in the methods, one at a time, and check that the
tests catch every one of them.

Not collected by pytest (no test_ prefix). Run from anywhere:

    python tests/mutants/run_method_mutants.py            # baseline + every mutant
    python tests/mutants/run_method_mutants.py --only mc_uniform_pairs dropout_shared_layers
    python tests/mutants/run_method_mutants.py --tests tests/test_methods.py   # other suites
    python tests/mutants/run_method_mutants.py --list

The repository's methods/, runner/ and tests/ (and pyproject.toml, for pytest's settings)
are snapshotted once into a temporary directory, so files another engineer edits meanwhile
cannot mix into a run. Each run (the unmutated baseline first, then each mutant) gets a fresh
copy of that snapshot; a mutant is an exact text replacement in the copy, and the script stops
with an error naming the mutant if its text is not found exactly once. The copy's own modules
must be the ones imported: before each run, a Python process with the same environment imports
the mutated module and checks that it comes from the copy and contains the mutation (the
baseline row prints where `methods` was imported from). Then, in the copy, with PYTHONPATH
pointing at it and torch on one thread:

    python -m pytest -x -q -p no:cacheprovider tests/test_method_math.py tests/test_methods.py

Prints a table (mutant, killed, by which test, seconds). Exit status 1 if the baseline fails,
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
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
COPIED = ("methods", "runner", "tests")
COPIED_FILES = ("pyproject.toml",)
DEFAULT_TESTS = ("tests/test_method_math.py", "tests/test_methods.py")
TIMEOUT = 1800  # seconds per pytest run


@dataclass(frozen=True)
class Mutant:
    name: str
    path: str  # relative to the repository
    old: str  # must occur exactly once in the file
    new: str
    what: str


MUTANTS = [
    # 1. MC-APPROX: uniform pairs instead of Eq. 8.
    Mutant(
        "mc_uniform_pairs",
        "methods/mc_approx.py",
        "    p = keep_probabilities(a_norms.detach(), b_norms.detach(), k, sampling.uniform_mix)\n",
        "    p = keep_probabilities(\n"
        "        torch.ones_like(a_norms), torch.ones_like(b_norms), k, sampling.uniform_mix\n"
        "    )\n",
        "choose_pairs: p_i = k / n (uniform), not Eq. 8",
    ),
    # 2. MC-APPROX: one factor's norms only.
    Mutant(
        "mc_only_a_norms",
        "methods/mc_approx.py",
        "    p = keep_probabilities(a_norms.detach(), b_norms.detach(), k, sampling.uniform_mix)\n",
        "    p = keep_probabilities(\n"
        "        a_norms.detach(), torch.ones_like(b_norms), k, sampling.uniform_mix\n"
        "    )\n",
        "choose_pairs: p_i from |A[:, i]| only",
    ),
    Mutant(
        "mc_only_b_norms",
        "methods/mc_approx.py",
        "    p = keep_probabilities(a_norms.detach(), b_norms.detach(), k, sampling.uniform_mix)\n",
        "    p = keep_probabilities(\n"
        "        torch.ones_like(a_norms), b_norms.detach(), k, sampling.uniform_mix\n"
        "    )\n",
        "choose_pairs: p_i from |B[i, :]| only",
    ),
    Mutant(
        "mc_grad_input_without_weight_norms",
        "methods/mc_approx.py",
        "        norms = None if layer.sampling.pairs_to_keep(units) >= units "
        "else layer.weight_row_norms()\n",
        "        norms = (\n"
        "            None\n"
        "            if layer.sampling.pairs_to_keep(units) >= units\n"
        "            else torch.ones(units, dtype=grad_out.dtype)\n"
        "        )\n",
        "_layer_backward: input-gradient pairs by |dY[:, i]| only (weight rows ignored)",
    ),
    Mutant(
        "mc_grad_weight_by_inputs_only",
        "methods/mc_approx.py",
        "        else choose_pairs(grad_out.norm(dim=1), x.norm(dim=1), "
        "layer.sampling, layer.generator)\n",
        "        else choose_pairs(\n"
        "            torch.ones(len(x), dtype=x.dtype), x.norm(dim=1), "
        "layer.sampling, layer.generator\n"
        "        )\n",
        "_layer_backward: weight-gradient pairs by |x_b| only (dY rows ignored)",
    ),
    Mutant(
        "mc_tracked_norms_frozen",
        "methods/mc_approx.py",
        "        self.row_sq.add_(w_dot_g, alpha=-2 * lr).add_(g_sq, alpha=lr * lr)\n",
        "        del w_dot_g, g_sq  # the SGD step is not applied to the tracked norms\n",
        "MCLinear.after_sgd_step: tracked weight-row norms stale between exact re-reads",
    ),
    # 3. MC-APPROX: clamped pairs scaled by the unclamped 1/p.
    Mutant(
        "mc_clamped_scaled_unclamped",
        "methods/mc_approx.py",
        "    return kept, p.index_select(0, kept).reciprocal()\n\n\ndef sampled_matmul(",
        "    w = a_norms.detach() * b_norms.detach()\n"
        "    raw = k * w / w.sum()  # Eq. 8 before clamping at 1\n"
        "    return kept, raw.index_select(0, kept).reciprocal()\n\n\ndef sampled_matmul(",
        "choose_pairs: scale 1 / (k w_i / sum w) even where p_i is clamped at 1",
    ),
    Mutant(
        "mc_sqrt_scale",
        "methods/mc_approx.py",
        "    return kept, p.index_select(0, kept).reciprocal()\n\n\ndef sampled_matmul(",
        "    return kept, p.index_select(0, kept).rsqrt()\n\n\ndef sampled_matmul(",
        "choose_pairs: scale 1 / sqrt(p) (Drineas' D on one factor only)",
    ),
    # 4. MC-APPROX: a sampled product biased by 10%.
    Mutant(
        "mc_grad_weight_biased",
        "methods/mc_approx.py",
        "        coef = grad_out.index_select(0, kept) * scale.unsqueeze(1)  # (c, out)\n",
        "        coef = grad_out.index_select(0, kept) * (1.1 * scale.unsqueeze(1))  # (c, out)\n",
        "_layer_backward: sampled grad_w x 1.1",
    ),
    Mutant(
        "mc_grad_input_biased",
        "methods/mc_approx.py",
        '        layer.count("grad_input", kept_pairs)\n',
        "        if norms is not None:  # sampled\n"
        "            grad_x = grad_x * 1.1\n"
        '        layer.count("grad_input", kept_pairs)\n',
        "_layer_backward: sampled grad_input x 1.1",
    ),
    Mutant(
        "mc_sampled_matmul_biased",
        "methods/mc_approx.py",
        "    a_kept = a.index_select(1, kept) * scale  # (N, c), scaled elementwise\n",
        "    a_kept = a.index_select(1, kept) * (1.1 * scale)  # (N, c), scaled elementwise\n",
        "sampled_matmul: every sampled product (grad_input, forward) x 1.1",
    ),
    Mutant(
        "mc_forward_biased",
        "methods/mc_approx.py",
        "        y, kept = sampled_matmul(x, self.weight.t(), self.sampling, self.generator)\n",
        "        y, kept = sampled_matmul(x, self.weight.t(), self.sampling, self.generator)\n"
        "        if self.sampling.pairs_to_keep(x.shape[1]) < x.shape[1]:  # sampled\n"
        "            y = y * 1.1\n",
        "MCLinear.sampled_forward: sampled forward product x 1.1",
    ),
    # 5. ALSH-APPROX: rebuilds that do nothing after the first build (stale tables).
    Mutant(
        "alsh_layer_tables_stale",
        "methods/alsh_approx.py",
        "    def rebuild(self, weight: torch.Tensor, bias: torch.Tensor) -> None:\n",
        "    def rebuild(self, weight: torch.Tensor, bias: torch.Tensor) -> None:\n"
        '        if getattr(self, "_built", False):\n'
        "            return\n"
        "        self._built = True\n",
        "LayerTables.rebuild: a no-op after the first build",
    ),
    Mutant(
        "alsh_rebuild_tables_stale",
        "methods/alsh_approx.py",
        "            for layer, tables in zip(self.layers, self.tables, strict=False):\n",
        "            for layer, tables in (\n"
        "                zip(self.layers, self.tables, strict=False) if self._stale else ()\n"
        "            ):\n",
        "ALSHApprox.rebuild_tables: rebuilds only stale (first-use) tables",
    ),
    # 6. DROPOUT: the same kept units in every layer.
    Mutant(
        "dropout_shared_layers",
        "methods/dropout.py",
        "        kept = kept_units(self.arch.width, self.keep, self.sampling_generator)\n",
        '        if layer == 0 or not hasattr(self, "_shared_kept"):\n'
        "            self._shared_kept = kept_units(\n"
        "                self.arch.width, self.keep, self.sampling_generator\n"
        "            )\n"
        "        kept = self._shared_kept\n",
        "BatchMaskDropout: one draw per step reused for every layer",
    ),
    Mutant(
        "dropout_same_every_step",
        "methods/dropout.py",
        "        kept = kept_units(self.arch.width, self.keep, self.sampling_generator)\n",
        "        kept = kept_units(\n"
        "            self.arch.width, self.keep, torch.Generator().manual_seed(1000 + layer)\n"
        "        )\n",
        "BatchMaskDropout: a generator re-seeded per layer: the same mask every step",
    ),
    # 7. Sparse blocks: active rows x ALL columns.
    Mutant(
        "sparse_rows_by_all_columns",
        "methods/sparse.py",
        "            w = self._block(layer.weight, active.units, prev, record)"
        "  # (|S_i|, |S_{i-1}|)\n",
        "            w = self._block(layer.weight, active.units, None, record)  # (|S_i|, fan_in)\n"
        "            if prev is not None:  # the input back at full width, zeros elsewhere\n"
        "                full = torch.zeros(len(h), layer.in_features, dtype=h.dtype)\n"
        "                h = full.index_copy(1, prev, h)\n",
        "SparseMLP.sparse_hidden: block W[S_i, :] on a zero-padded input, not W[S_i, S_{i-1}]",
    ),
]


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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", metavar="NAME", help="run only these mutants")
    parser.add_argument("--tests", nargs="+", default=list(DEFAULT_TESTS), help="test files")
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
        for m in MUTANTS:
            print(f"{m.name:38} {m.path:24} {m.what}")
        return 0
    chosen = MUTANTS
    if args.only:
        unknown = set(args.only) - {m.name for m in MUTANTS}
        if unknown:
            raise SystemExit(f"unknown mutants: {sorted(unknown)}")
        chosen = [m for m in MUTANTS if m.name in args.only]

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


if __name__ == "__main__":
    sys.exit(main())
