"""The Python API (runner/api): jobs from dicts validated like files, submit's events and
result, status, and the command line as a thin shell over it (the same folder either way)."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest

import runner
from runner.api import (
    CellFinished,
    CellStarted,
    Event,
    SweepPlanned,
    SweepStarted,
    Tick,
)
from runner.errors import SpecError

DIGITS: dict[str, Any] = {
    "name": "api-digits",
    "grid": {"method": ["standard", "alsh_approx"], "depth": [1, 2]},
    "params": {
        "dataset": "digits",
        "width": 32,
        "epochs": 2,
        "batch_size": 20,
        "lr": 0.05,
        "train_limit": 300,
        "seed": 0,
    },
    "resources": {"memory_gb": 0.5},
}


def test_a_job_from_a_dict_is_the_job_from_its_toml_file(tmp_path: Path) -> None:
    import tomli_w

    path = tmp_path / "job.toml"
    path.write_text(tomli_w.dumps(DIGITS), encoding="utf-8")
    from_file, from_dict = runner.load_job(path), runner.load_job(DIGITS)
    assert from_dict.source == "<dict>"
    assert tomllib.loads(from_dict.text) == DIGITS  # what lands in the results folder
    keys = [c.key for c in runner.plan(from_file, tmp_path / "r").cells]
    assert keys == [c.key for c in runner.plan(from_dict, tmp_path / "r").cells]
    assert len(keys) == 4


def test_a_bad_dict_gets_every_problem_named_like_a_bad_file() -> None:
    bad = {**DIGITS, "grid": {"method": ["standard", "nosuch"]}, "parms": {}}
    with pytest.raises(SpecError) as caught:
        runner.load_job(bad, source="my-notebook")
    text = str(caught.value)
    assert "my-notebook" in text and "nosuch" in text and "parms" in text
    with pytest.raises(SpecError, match="not expressible as a TOML job file"):
        runner.load_job({**DIGITS, "params": {**DIGITS["params"], "lr": None}})


def test_submit_reports_events_in_order_and_resumes_to_nothing(tmp_path: Path) -> None:
    results = tmp_path / "results"
    events: list[Event] = []
    result = runner.submit(DIGITS, results, executor="serial", on_event=events.append)
    assert result.exit_code == 0 and result.ran and not result.interrupted
    assert result.results == results
    kinds = [type(e) for e in events]
    assert kinds[0] is SweepPlanned and kinds[1] is SweepStarted
    started = [e.cell.key for e in events if isinstance(e, CellStarted)]
    finished = [e.cell.key for e in events if isinstance(e, CellFinished)]
    assert sorted(started) == sorted(finished) == sorted(result.finished)
    assert sorted(result.finished) == sorted(c.key for c in result.plan.cells)
    for event in events:  # a cell is handed over before it finishes
        if isinstance(event, CellFinished):
            assert kinds.index(CellStarted) < events.index(event)
    assert any(isinstance(e, Tick) for e in events)
    rows = {e.cell.key: e.row for e in events if isinstance(e, CellFinished)}
    assert {r["method"] for r in rows.values()} == {"standard", "alsh_approx"}

    again: list[Event] = []
    second = runner.submit(DIGITS, results, executor="serial", on_event=again.append)
    assert not second.ran and second.exit_code == 0 and second.finished == []
    assert [type(e) for e in again] == [SweepPlanned]

    folder = runner.status(results)
    assert folder.job is not None and folder.job.name == "api-digits"
    assert folder.plan is not None and len(folder.plan.done) == 4 and not folder.plan.todo
    assert folder.failed == {} and folder.corrupt == {}

    overview = runner.overview(results)
    assert len(overview) == 4 and set(overview["depth"]) == {1, 2}


def test_submit_rejects_an_unknown_executor_before_touching_anything(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="'ray' or 'serial'"):
        runner.submit(DIGITS, tmp_path / "r", executor="threads")  # type: ignore[arg-type]
    assert not (tmp_path / "r").exists()


def test_the_command_line_and_the_api_fill_the_same_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import tomli_w

    from runner.cli.main import main

    job = tmp_path / "job.toml"
    job.write_text(tomli_w.dumps(DIGITS), encoding="utf-8")
    results = tmp_path / "results"
    first = runner.submit(DIGITS, results, executor="serial")
    assert main(["submit", str(job), "--executor", "serial", "--results", str(results)]) == 0
    out = capsys.readouterr().out
    assert "4 cells: 4 done, 0 failed, 0 to run" in out and "Nothing to run." in out
    assert len(first.finished) == 4


def test_report_and_export_stay_functions_after_their_subpackages_are_imported() -> None:
    """`runner.report` and `runner.export` are also subpackages, whose import would set them
    as attributes of `runner` and hide the functions ("'module' object is not callable")."""
    import runner.export.collect
    import runner.report.build

    assert callable(runner.report) and callable(runner.export)
    assert runner.report.__module__ == runner.export.__module__ == "runner.api.folders"
