"""The job files shipped in jobs/: each validates, and its comment states its true cell count."""

from __future__ import annotations

import re

from runner.errors import CpusweepError
from runner.job.grid import expand
from runner.job.spec import load_spec
from tests.conftest import REPO

CELL_COUNT = re.compile(r"\b(\d+) (?:small )?cells\b")


def test_every_job_file_validates_and_says_how_many_cells_it_has() -> None:
    problems = []
    jobs = sorted((REPO / "jobs").glob("*.toml"))
    assert len(jobs) >= 8
    for path in jobs:
        comment = "".join(line for line in path.read_text().splitlines(True) if line[:1] == "#")
        claims = CELL_COUNT.findall(comment)
        try:
            expansion = expand(load_spec(path))
        except CpusweepError as exc:
            problems.append(str(exc))
            continue
        if expansion.warnings:
            problems.append(f"{path.name}: warnings {expansion.warnings}")
        if claims != [str(len(expansion.cells))]:
            problems.append(
                f"{path.name}: the comment says {claims} cells, the job has {len(expansion.cells)}"
            )
    assert not problems, "\n".join(problems)
