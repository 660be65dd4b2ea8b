"""The method tests can fail: every planted mathematical mistake is caught.

Runs tests/mutants/run_method_mutants.py (each mutant in its own copy of the code, the method
test files run against it) and requires every mutant to be killed. Several minutes: marked
`mutation`, left out of the default run and run by .ci/run after it."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import REPO


@pytest.mark.mutation
@pytest.mark.timeout(3600)
def test_every_planted_mistake_in_the_methods_is_caught() -> None:
    script = REPO / "tests" / "mutants" / "run_method_mutants.py"
    tests = [
        "tests/test_method_math.py",
        "tests/test_methods.py",
        "tests/test_alsh_approx.py",
        "tests/test_sparse_kernels.py",
    ]
    result = subprocess.run(
        [sys.executable, str(script), "--tests", *tests],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    assert "OK: the baseline passes and every mutant is killed" in result.stdout
