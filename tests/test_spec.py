"""Job-file validation: pure, no torch or Ray. Every problem is reported at once."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from runner.errors import SpecError
from runner.job.spec import Resources, parse_spec


def spec_problems(text: str) -> list[str]:
    with pytest.raises(SpecError) as info:
        parse_spec(textwrap.dedent(text), "job.toml")
    return info.value.problems


def test_minimal_job_gets_the_paper_defaults() -> None:
    spec = parse_spec('name = "x"\n[params]\nmethod = "standard"\ndataset = "mnist"\n')
    assert spec.name == "x"
    assert spec.axes == {}
    assert spec.params == {"method": "standard", "dataset": "mnist"}
    assert spec.resources == Resources(cpus_per_cell=1.0, torch_threads=1, memory_gb=2.0)


def test_every_problem_is_reported_at_once_with_valid_choices() -> None:
    problems = spec_problems("""
        name = "bad name!"
        colour = "blue"
        [grid]
        method = ["standard", "nonsense"]
        depth = 3
        widht = [10]
        [params]
        optimizer = "rmsprop"
        lr = -1.0
        epochs = true
        [resources]
        cpus = 2
    """)
    text = "\n".join(problems)
    assert "name: 'bad name!'" in text
    assert "colour: unknown top-level key" in text
    assert "grid.method[1]: 'nonsense' is not one of the valid choices: 'standard'" in text
    assert "grid.depth: an axis needs a list" in text
    assert "grid.widht: unknown parameter 'widht'" in text and "valid: method" in text
    assert "params.optimizer: 'rmsprop' is not one of the valid choices: 'sgd', 'adam'" in text
    assert "params.lr: must be greater than 0.0" in text
    assert "params.epochs: expected an integer, got True" in text
    assert "resources.cpus: unknown key; valid: cpus_per_cell" in text
    assert "dataset: required; set it in [params] or as a [grid] axis (valid: digits, mnist" in text
    assert len(problems) == 10


def test_toml_syntax_error_names_the_file_and_line() -> None:
    with pytest.raises(SpecError) as info:
        parse_spec('name = "x"\n[grid\nmethod = 1\n', "jobs/broken.toml")
    message = str(info.value)
    assert message.startswith("jobs/broken.toml: 1 problem")
    assert "not valid TOML" in message and "line 2" in message


def test_axis_and_scalar_conflict_and_duplicates() -> None:
    problems = spec_problems("""
        name = "x"
        [grid]
        depth = [1, 1]
        [params]
        depth = 2
        method = "standard"
        dataset = "digits"
    """)
    assert any("grid.depth: repeated values" in p for p in problems)
    assert any("depth: set both as an axis" in p for p in problems)


def test_an_axis_given_twice_and_a_name_with_a_newline_are_refused() -> None:
    problems = spec_problems("""
        name = "abc\\n"
        [grid]
        "dropout.keep" = [0.1]
        [grid.dropout]
        keep = [0.2]
        [params]
        method = "dropout"
        dataset = "digits"
    """)
    assert problems == [
        "name: 'abc\\n' must be an ASCII letter or digit followed by up to 99 letters, digits, "
        "'.', '_' or '-' (it becomes a folder name)",
        "grid.dropout.keep: given twice (dotted and as a table); keep one",
    ]


def test_alsh_table_sizes_are_bounded() -> None:
    problems = spec_problems("""
        name = "x"
        [params]
        method = "alsh_approx"
        dataset = "digits"
        [methods.alsh_approx]
        K = 30
    """)
    assert len(problems) == 1 and "methods.alsh_approx.K" in problems[0]
    assert "16" in problems[0]


def test_lists_in_params_point_to_grid_and_tables_to_methods() -> None:
    problems = spec_problems("""
        name = "x"
        [params]
        method = "standard"
        dataset = "digits"
        seed = [0, 1]
        standard = { foo = 1 }
        [methods.nonsense]
        k = 1
    """)
    text = "\n".join(problems)
    assert "params.seed: a list here is ambiguous; to sweep it, move it to [grid]" in text
    assert "params.standard: method hyperparameters go in a [methods.standard] table" in text
    assert "methods.nonsense: unknown method; valid: standard" in text


def test_overrides_and_excludes_are_validated() -> None:
    problems = spec_problems("""
        name = "x"
        [grid]
        method = ["standard"]
        batch_size = [1, 20]
        [params]
        dataset = "digits"
        [[override]]
        where = { batch_size = 1 }
        set = { lr = "fast", method = "standard" }
        [[override]]
        set = { lr = 0.1 }
        [[exclude]]
        depht = 3
    """)
    text = "\n".join(problems)
    assert "override[0].set.lr: expected a number, got 'fast'" in text
    assert "override[0].set.method: an override cannot change what is trained" in text
    assert "override[1].where: expected a non-empty table" in text
    assert "exclude[0].depht: unknown parameter 'depht'" in text


def test_int_is_accepted_for_float_and_normalised() -> None:
    spec = parse_spec('name = "x"\n[params]\nmethod = "standard"\ndataset = "digits"\nlr = 1\n')
    assert spec.params["lr"] == 1.0 and isinstance(spec.params["lr"], float)


def test_missing_file_is_a_spec_error(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from runner.job.spec import load_spec

    with pytest.raises(SpecError, match="file not found"):
        load_spec(tmp_path / "nope.toml")


def test_pure_modules_import_without_torch_or_ray() -> None:
    code = textwrap.dedent("""
        import sys
        import runner.job.spec, runner.job.grid, runner.job.cells, methods.registry
        import runner.run.sweep
        import runner.run.estimate
        import runner.datasets.registry
        heavy = [m for m in ("torch", "ray", "torchvision") if m in sys.modules]
        assert not heavy, heavy
    """)
    subprocess.run([sys.executable, "-c", code], check=True)
