"""Job-file validation: pure, no torch or Ray. Every problem is reported at once."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from runner.errors import SpecError
from runner.job.spec import Resources, load_spec, parse_spec


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


def test_minimum_bounds_exclusive_and_inclusive() -> None:
    """lr must be above 0 (0 refused); momentum and seed may be 0, not below; epochs from 1."""
    base = 'name = "j"\n[params]\nmethod = "standard"\ndataset = "digits"\n'
    spec = parse_spec(base + "momentum = 0.0\nseed = 0\nlr = 1e-9\n")
    assert spec.params["momentum"] == 0.0 and spec.params["seed"] == 0
    with pytest.raises(SpecError) as caught:
        parse_spec(base + "lr = 0.0\nmomentum = -0.1\nepochs = 0\n")
    assert caught.value.problems == [
        "params.lr: must be greater than 0.0, got 0.0",
        "params.momentum: must be at least 0.0, got -0.1",
        "params.epochs: must be at least 1, got 0",
    ]


def test_two_problems_in_a_row_in_every_table_are_both_reported() -> None:
    """Validation goes on after a problem: the second bad entry of each table is reported
    too (a `break` for a `continue` anywhere would hide it). The description is kept."""
    text = """
        name = "two-of-each"
        description = "every table with two problems in a row"
        epochs = 1
        shade = 2
        grid = { widht = [1], depht = [2], seed = 3, epochs = 4, lr = [], momentum = [] }
        [params]
        method = "standard"
        dataset = "digits"
        mc_approx = { k = 1 }
        dropout = { keep = 0.5 }
        hue = "red"
        tint = "blue"
        depth = [1]
        width = [2]
        [methods]
        nosuch = { k = 1 }
        other = { k = 1 }
        dropout = 3
        adaptive_dropout = 4
        mc_approx = { bogus = 1, nope = 2, k = [1], sample_ratio = [0.1] }
        [[override]]
        where = { hue = 1, tint = 2 }
        set = { method = "dropout", dataset = "mnist" }
        [resources]
        cpus = 1
        gpus = 1
    """
    problems = [p.split(";")[0] for p in spec_problems(text)]
    assert problems == [
        "epochs: unknown top-level key (did you mean [params]?)",
        "shade: unknown top-level key",
        "grid.widht: unknown parameter 'widht'",
        "grid.depht: unknown parameter 'depht'",
        "grid.seed: an axis needs a list of values, e.g. seed = [3]",
        "grid.epochs: an axis needs a list of values, e.g. epochs = [4]",
        "grid.lr: an axis needs at least one value",
        "grid.momentum: an axis needs at least one value",
        "params.mc_approx: method hyperparameters go in a [methods.mc_approx] table",
        "params.dropout: method hyperparameters go in a [methods.dropout] table",
        "params.hue: unknown parameter 'hue'",
        "params.tint: unknown parameter 'tint'",
        "params.depth: a list here is ambiguous",
        "params.width: a list here is ambiguous",
        "methods.nosuch: unknown method",
        "methods.other: unknown method",
        "methods.dropout: expected a table of hyperparameter = value",
        "methods.adaptive_dropout: expected a table of hyperparameter = value",
        "methods.mc_approx.bogus: 'mc_approx' has no hyperparameter 'bogus' (valid: mode, "
        "sample_ratio, k, min_k, uniform_mix)",
        "methods.mc_approx.nope: 'mc_approx' has no hyperparameter 'nope' (valid: mode, "
        "sample_ratio, k, min_k, uniform_mix)",
        "methods.mc_approx.k: to sweep it, use [grid.mc_approx] k = [...]",
        "methods.mc_approx.sample_ratio: to sweep it, use [grid.mc_approx] sample_ratio = [...]",
        "override[0].where.hue: unknown parameter 'hue'",
        "override[0].where.tint: unknown parameter 'tint'",
        "override[0].set.method: an override cannot change what is trained",
        "override[0].set.dataset: an override cannot change what is trained",
        "resources.cpus: unknown key",
        "resources.gpus: unknown key",
    ]
    good = parse_spec(
        'name = "d"\ndescription = "what it is"\n[params]\nmethod = "standard"\n'
        'dataset = "digits"\n'
    )
    assert good.description == "what it is"


def test_tables_of_the_wrong_shape_are_each_reported() -> None:
    """A top-level table given as a scalar, an empty `where` or `set`: problems, not a crash."""
    problems = spec_problems("""
        name = "shapes"
        grid = 1
        params = 2
        methods = 3
        override = 4
        exclude = 5
        resources = 6
    """)
    assert [p for p in problems if ": required;" not in p] == [
        "grid: expected a table of axis = [values]",
        "params: expected a table of name = value",
        "methods: expected tables named after methods, e.g. [methods.mc_approx]",
        "override: use [[override]] tables (an array of tables)",
        "exclude: use [[exclude]] tables (an array of tables)",
        "resources: expected a table",
    ]
    problems = spec_problems("""
        name = "empty"
        [params]
        method = "standard"
        dataset = "digits"
        [[override]]
        where = {}
        set = {}
        [grid]
        nope = { a = [1] }
        nada = { b = [2] }
        [grid.dropout]
        keep = { x = [1] }
        p = { y = [2] }
    """)
    assert [p.split(" (")[0] for p in problems] == [
        "grid.nope: a table here must be named after a method",
        "grid.nada: a table here must be named after a method",
        "grid.dropout.keep: nested tables are not allowed here",
        "grid.dropout.p: nested tables are not allowed here",
        "override[0].where: expected a non-empty table of parameter = value(s)",
        "override[0].set: expected a non-empty table of parameter = value",
    ]


def test_resources_are_validated_and_normalised() -> None:
    base = 'name = "r"\n[params]\nmethod = "standard"\ndataset = "digits"\n[resources]\n'
    spec = parse_spec(base + "memory_gb = 4\ncpus_per_cell = 2\n")
    assert spec.resources.memory_gb == 4.0 and isinstance(spec.resources.memory_gb, float)
    assert spec.resources.cpus_per_cell == 2.0
    with pytest.raises(SpecError) as caught:
        parse_spec(base + "torch_threads = 0\nmemory_gb = -1.0\n", "jobs/r.toml")
    assert caught.value.source == "jobs/r.toml"
    assert caught.value.problems == [
        "resources.torch_threads: must be at least 1, got 0",
        "resources.memory_gb: must be greater than 0.0, got -1.0",
    ]


def test_a_job_file_is_read_whole_and_named(tmp_path: Path) -> None:
    text = 'name = "f"  # é\n[params]\nmethod = "standard"\ndataset = "digits"\n'
    path = tmp_path / "f.toml"
    path.write_text(text, encoding="utf-8")
    spec = load_spec(path)
    assert (spec.source, spec.text) == (str(path), text)
    with pytest.raises(SpecError) as caught:
        load_spec(tmp_path / "gone.toml")
    assert caught.value.source == str(tmp_path / "gone.toml")
    assert caught.value.problems == ["file not found; check the path"]
    with pytest.raises(SpecError) as caught:
        load_spec(tmp_path)  # a folder
    assert caught.value.source == str(tmp_path)
    assert caught.value.problems[0].startswith("cannot be read: ")


def test_a_cells_label_names_its_architecture_once() -> None:
    from runner.job.grid import expand

    spec = parse_spec("""
name = "labels"
[grid]
method = ["standard"]
dataset = ["digits"]
batch_size = [20]
seed = [3]
arch = ["cnn"]
depth = [2]
lr = [0.5]
""")
    [cell] = expand(spec).cells
    assert cell.label() == "standard/digits d2 b20 s3 cnn lr=0.5"
