"""Smoke runs: `--only` picks part of a job, `--set` varies it for one run as new cells
(runner/job/select.py), which never overwrite or count as the job's real cells."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

import runner
from runner.cli.main import main
from runner.errors import SelectionError
from runner.job.cells import Cell
from runner.job.grid import expand
from runner.job.select import from_command_line, select
from runner.job.spec import parse_spec

JOB = textwrap.dedent(
    """
    name = "smoke"
    [grid]
    method = ["standard", "alsh_approx"]
    depth = [1, 2]
    seed = [0, 1]
    [params]
    dataset = "digits"
    width = 32
    epochs = 2
    batch_size = 20
    lr = 0.05
    train_limit = 200
    """
)


def cells() -> list[Cell]:
    return expand(parse_spec(JOB, "smoke.toml")).cells


def test_only_keeps_the_cells_with_the_listed_values_typed_by_the_parameter() -> None:
    kept = select(cells(), {"method": "standard", "depth": "2,1", "seed": ["1"]})
    assert {(c.method, c.values["depth"], c.values["seed"]) for c in kept} == {
        ("standard", 1, 1),
        ("standard", 2, 1),
    }
    assert {c.key for c in kept} <= {c.key for c in cells()}  # the job's own cells
    # Python values work as well as text
    assert {c.key for c in select(cells(), {"depth": [2], "seed": [1]})} == {
        c.key for c in select(cells(), {"depth": "2", "seed": "1"})
    }


def test_set_makes_new_cells_keyed_by_content_for_the_methods_they_concern() -> None:
    job = {c.key for c in cells()}
    changed = select(cells(), {"seed": "0"}, {"epochs": "1", "alsh_approx.K": "4"})
    assert len(changed) == 4 and not {c.key for c in changed} & job
    for cell in changed:
        assert cell.values["epochs"] == 1
        assert ("alsh_approx.K" in cell.values) == (cell.method == "alsh_approx")
        if cell.method == "alsh_approx":
            assert cell.values["alsh_approx.K"] == 4
        assert "epochs=1" in cell.label()
    # a float written as text is the same float: lr=5e-2 sets exactly the job's 0.05
    same = select(cells(), None, {"lr": "5e-2"})
    assert {c.key for c in same} == job
    # setting the seed merges the cells that differed only there
    assert len(select(cells(), None, {"seed": "7"})) == 4


def test_every_problem_is_reported_at_once_naming_the_fix() -> None:
    with pytest.raises(SelectionError) as caught:
        select(
            cells(),
            {"depth": "9", "nope": "1", "method": "standard"},
            {"epochs": "x", "method": "dropout", "lr": "-1", "alsh_approx.K": "4"},
        )
    text = str(caught.value)
    assert "--only depth: no cell of the job has 9; the job has 1, 2" in text
    assert "--only nope: unknown parameter; valid:" in text
    assert "--set epochs: 'x' is not int" in text
    assert "--set method: cannot be set; pick cells with --only method=..." in text
    assert "--set lr:" in text
    assert len(caught.value.problems) == 5
    with pytest.raises(SelectionError, match="none of the selected cells runs alsh_approx"):
        select(cells(), {"method": "standard"}, {"alsh_approx.K": "4"})
    with pytest.raises(SelectionError, match="expected NAME=VALUE"):
        from_command_line(["depth"], None)
    with pytest.raises(SelectionError, match="given twice"):
        from_command_line(["depth=1", "depth=2"], None)


@pytest.mark.slow
def test_a_smoke_run_beside_a_real_one_overwrites_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    job = tmp_path / "smoke.toml"
    job.write_text(JOB, encoding="utf-8")
    results = tmp_path / "results"
    base = ["--results", str(results), "--executor", "serial"]
    assert main(["submit", str(job), *base, "--only", "method=standard", "--only", "seed=0"]) == 0
    real = {p.name: p.read_bytes() for p in (results / "cells").iterdir()}
    assert len(real) == 2

    smoke = ["--only", "method=standard", "--only", "seed=0", "--set", "epochs=1"]
    assert main(["plan", str(job), "--results", str(results), *smoke]) == 0
    assert "2 cells: 0 done, 0 failed, 2 to run" in capsys.readouterr().out
    assert main(["submit", str(job), *base, *smoke]) == 0
    now = {p.name: p.read_bytes() for p in (results / "cells").iterdir()}
    assert len(now) == 4 and all(now[name] == data for name, data in real.items())
    cells_frame, _ = runner.load(results)
    assert sorted(cells_frame["epochs"]) == [1, 1, 2, 2]

    # The real job: the real cells done, the smoke cells apart from it
    folder = runner.status(results)
    assert folder.plan is not None and len(folder.plan.done) == 2 and folder.extra_done == 2
    assert main(["status", str(results)]) == 0
    assert "2 finished cell(s) the job file does not make" in capsys.readouterr().out

    assert main(["submit", str(job), *base, "--only", "depth=5"]) == 2
    assert "--only depth: no cell of the job has 5" in capsys.readouterr().err
