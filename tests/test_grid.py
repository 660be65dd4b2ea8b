"""Grid expansion, overrides, excludes and cell keys: pure logic, no torch or Ray."""

from __future__ import annotations

import textwrap

import pytest

from methods.registry import METHODS, MethodInfo
from runner.job.cells import Cell
from runner.job.grid import expand
from runner.job.params import Param
from runner.job.spec import parse_spec


@pytest.fixture
def fake_methods(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two extra methods with hyperparameters, registered for the duration of a test."""
    monkeypatch.setitem(
        METHODS,
        "sampler",
        MethodInfo(
            name="sampler",
            version=3,
            summary="test",
            module="nowhere",
            params=(
                Param("k", int, 10, "samples", minimum=1),
                Param("mode", str, "backward", "mode", choices=("backward", "forward")),
            ),
        ),
    )
    monkeypatch.setitem(
        METHODS,
        "dropper",
        MethodInfo(
            name="dropper",
            version=1,
            summary="test",
            module="nowhere",
            params=(Param("keep", float, 0.05, "keep probability", minimum=0.0, maximum=1.0),),
        ),
    )


def cells_of(text: str) -> list[Cell]:
    return expand(parse_spec(textwrap.dedent(text), "job.toml")).cells


def test_cartesian_product_in_file_order() -> None:
    cells = cells_of("""
        name = "g"
        [grid]
        depth = [1, 2, 3]
        batch_size = [1, 20]
        [params]
        method = "standard"
        dataset = "digits"
    """)
    assert [(c.values["depth"], c.values["batch_size"]) for c in cells] == [
        (1, 1),
        (1, 20),
        (2, 1),
        (2, 20),
        (3, 1),
        (3, 20),
    ]
    assert len({c.key for c in cells}) == 6
    assert all(c.values["width"] == 1000 and c.values["epochs"] == 50 for c in cells)


def test_method_axes_multiply_only_their_method(fake_methods: None) -> None:
    cells = cells_of("""
        name = "g"
        [grid]
        method = ["standard", "sampler", "dropper"]
        [grid.sampler]
        k = [5, 10, 20]
        [params]
        dataset = "digits"
        [methods.dropper]
        keep = 0.5
    """)
    by_method: dict[str, list[Cell]] = {}
    for cell in cells:
        by_method.setdefault(cell.method, []).append(cell)
    assert len(by_method["standard"]) == 1
    assert [c.values["sampler.k"] for c in by_method["sampler"]] == [5, 10, 20]
    assert all(c.values["sampler.mode"] == "backward" for c in by_method["sampler"])
    assert by_method["dropper"][0].method_params() == {"keep": 0.5}
    assert "sampler.k" not in by_method["standard"][0].values


def test_override_matches_before_overrides_and_later_wins(fake_methods: None) -> None:
    cells = cells_of("""
        name = "g"
        [grid]
        method = ["standard", "sampler"]
        batch_size = [1, 20]
        [params]
        dataset = "digits"
        [[override]]
        where = { method = "sampler", batch_size = 1 }
        set = { lr = 1e-4, sampler = { k = 2 } }
        [[override]]
        where = { batch_size = [1] }
        set = { epochs = 7, lr = 5e-4 }
    """)
    got = {(c.method, c.values["batch_size"]): c.values for c in cells}
    assert got[("sampler", 1)]["lr"] == 5e-4  # the later override wins
    assert got[("sampler", 1)]["sampler.k"] == 2
    assert got[("sampler", 20)]["lr"] == 1e-3 and got[("sampler", 20)]["sampler.k"] == 10
    assert got[("standard", 1)]["epochs"] == 7 and "sampler.k" not in got[("standard", 1)]
    assert got[("standard", 20)]["epochs"] == 50


def test_excludes_and_warnings(fake_methods: None) -> None:
    spec = parse_spec(
        textwrap.dedent("""
        name = "g"
        [grid]
        method = ["standard", "sampler"]
        batch_size = [1, 20]
        [grid.dropper]
        keep = [0.1, 0.2]
        [params]
        dataset = "digits"
        [[exclude]]
        method = "sampler"
        batch_size = 20
        [[exclude]]
        depth = 7
        [[override]]
        where = { optimizer = "adam" }
        set = { lr = 0.1 }
        [[override]]
        where = { method = "standard" }
        set = { lr = 0.5, sampler = { k = 3 } }
    """),
        "job.toml",
    )
    expansion = expand(spec)
    assert sorted((c.method, c.values["batch_size"]) for c in expansion.cells) == [
        ("sampler", 1),
        ("standard", 1),
        ("standard", 20),
    ]
    text = "\n".join(expansion.warnings)
    assert "exclude[1] matches no cell" in text
    assert "override[0] matches no cell" in text
    assert "grid.dropper.keep: no cell uses method 'dropper'" in text
    # A `set` of a hyperparameter of a method that the `where` never matches.
    assert (
        "override[1].set.sampler.k: none of the cells it matches is a sampler cell, "
        "so it never applies" in text
    )
    assert "override[1].set.lr" not in text


def test_identical_cells_after_override_run_once() -> None:
    expansion = expand(
        parse_spec(
            textwrap.dedent("""
        name = "g"
        [grid]
        lr = [0.1, 0.2]
        [params]
        method = "standard"
        dataset = "digits"
        [[override]]
        where = { method = "standard" }
        set = { lr = 0.3 }
    """),
            "job.toml",
        )
    )
    assert len(expansion.cells) == 1
    assert any("identical" in w for w in expansion.warnings)


# --- keys --------------------------------------------------------------------------------------

BASE = """
name = "k"
[grid]
depth = [1, 3]
[params]
method = "standard"
dataset = "digits"
"""


def keys(text: str) -> dict[tuple[int, int], str]:
    return {(c.values["depth"], c.values["seed"]): c.key for c in cells_of(text)}


def test_keys_do_not_depend_on_grid_position_or_shape() -> None:
    base = keys(BASE)
    grown = keys(BASE.replace("depth = [1, 3]", "depth = [7, 3, 1]\nseed = [0, 5]"))
    assert grown[(1, 0)] == base[(1, 0)] and grown[(3, 0)] == base[(3, 0)]
    # The same value as a scalar or as a one-value axis, or given as its default: same key.
    explicit = keys(BASE.replace("[params]", "[params]\nwidth = 1000\nlr = 0.001"))
    assert explicit == base
    as_axis = keys(BASE.replace("[grid]", "[grid]\nwidth = [1000]"))
    assert as_axis == base


def test_keys_change_with_anything_that_changes_results(monkeypatch: pytest.MonkeyPatch) -> None:
    base = keys(BASE)[(1, 0)]
    assert keys(BASE.replace("[params]", "[params]\nlr = 0.002"))[(1, 0)] != base
    assert keys(BASE.replace("[params]", "[params]\nsplit_seed = 1"))[(1, 0)] != base
    threads = BASE + "[resources]\ntorch_threads = 2\n"
    assert keys(threads)[(1, 0)] != base
    memory = BASE + "[resources]\nmemory_gb = 8.0\ncpus_per_cell = 2\n"
    assert keys(memory)[(1, 0)] == base  # admission control does not change a result
    info = METHODS["standard"]
    monkeypatch.setitem(
        METHODS,
        "standard",
        MethodInfo(
            name=info.name, version=info.version + 1, summary=info.summary, module=info.module
        ),
    )
    assert keys(BASE)[(1, 0)] != base


def test_key_derivation_is_frozen(monkeypatch: pytest.MonkeyPatch) -> None:
    """Changing how keys are derived orphans every finished result of every user: this golden
    value may change only together with a migration. (STANDARD's version is held at 1, the
    one the value was taken with: a bump of the method changes its keys on purpose.)"""
    info = METHODS["standard"]
    monkeypatch.setitem(
        METHODS,
        "standard",
        MethodInfo(name=info.name, version=1, summary=info.summary, module=info.module),
    )
    cell = Cell(
        values={
            "method": "standard",
            "dataset": "digits",
            "arch": "mlp",
            "depth": 1,
            "width": 1000,
            "batch_size": 1,
            "lr": 0.001,
            "optimizer": "sgd",
            "momentum": 0.0,
            "epochs": 50,
            "seed": 0,
            "split_seed": 0,
            "train_limit": None,
        },
        torch_threads=1,
    )
    assert cell.key == keys(BASE)[(1, 0)]
    assert cell.key == GOLDEN_KEY


GOLDEN_KEY = "6093dc928e12d4e1"


def test_payload_round_trip_checks_the_key() -> None:
    cell = cells_of(BASE)[0]
    assert Cell.from_payload(cell.to_payload()).key == cell.key
    tampered = cell.to_payload()
    tampered["values"]["lr"] = 0.5
    with pytest.raises(ValueError, match="does not match its content"):
        Cell.from_payload(tampered)


def test_labels_tell_apart_cells_that_differ_only_in_a_grid_axis(fake_methods: None) -> None:
    cells = cells_of("""
        name = "g"
        [grid]
        lr = [1e-4, 1e-3]
        width = [100]
        "dropper.keep" = [0.05, 0.5]
        [params]
        method = "dropper"
        dataset = "digits"
        depth = 3
    """)
    labels = [c.label() for c in cells]
    assert labels == [
        "dropper/digits d3 b1 s0 lr=0.0001 width=100",
        "dropper/digits d3 b1 s0 lr=0.0001 width=100 keep=0.5",
        "dropper/digits d3 b1 s0 lr=0.001 width=100",
        "dropper/digits d3 b1 s0 lr=0.001 width=100 keep=0.5",
    ]
    # The label survives the trip to a worker; the key does not depend on it.
    back = Cell.from_payload(cells[0].to_payload())
    assert back.label() == labels[0] and back == cells[0]
    assert cells_of(BASE)[1].label() == "standard/digits d3 b1 s0"  # depth is in the base


# --- what the mutation run (docs/testing.md) found untested here ------------------------------


def test_key_of_a_train_limit_cell_is_frozen_and_carries_the_subset_version(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`train_limit` cells carry TRAIN_LIMIT_VERSION in their key (and only they do): a
    change of what the limit selects re-runs them, and nothing else."""
    import runner.job.cells

    info = METHODS["standard"]  # held at the version the values were taken with
    monkeypatch.setitem(
        METHODS,
        "standard",
        MethodInfo(name=info.name, version=1, summary=info.summary, module=info.module),
    )
    limited = BASE.replace("[params]", "[params]\ntrain_limit = 400")
    assert keys(limited)[(1, 0)] == "bff97c9a94ab844f"  # changes only with a migration
    monkeypatch.setattr(runner.job.cells, "TRAIN_LIMIT_VERSION", 99)
    assert keys(limited)[(1, 0)] != "bff97c9a94ab844f"
    assert keys(BASE)[(1, 0)] == GOLDEN_KEY


def test_an_old_payload_without_shown_axes_still_loads() -> None:
    cell = cells_of(BASE)[0]
    payload = cell.to_payload()
    del payload["shown"]
    assert Cell.from_payload(payload) == cell and Cell.from_payload(payload).shown == ()


def test_a_nan_never_enters_a_key() -> None:
    from runner.job.cells import canonical_json

    with pytest.raises(ValueError):
        canonical_json({"lr": float("nan")})


def test_other_methods_hyperparameters_stay_out_of_a_cell(fake_methods: None) -> None:
    cells = cells_of("""
        name = "g"
        [grid]
        method = ["standard", "sampler"]
        [params]
        dataset = "digits"
        [methods.dropper]
        keep = 0.5
        [methods.sampler]
        k = 4
    """)
    by_method = {c.method: c.values for c in cells}
    assert not [k for k in by_method["standard"] if "." in k]
    assert {k for k in by_method["sampler"] if "." in k} == {"sampler.k", "sampler.mode"}
    assert by_method["sampler"]["sampler.k"] == 4


def test_an_excluded_or_merged_method_axis_value_leaves_the_others(fake_methods: None) -> None:
    expansion = expand(
        parse_spec(
            textwrap.dedent("""
        name = "g"
        [grid]
        seed = [0, 1]
        [grid.sampler]
        k = [1, 2, 3, 4]
        [params]
        method = "sampler"
        dataset = "digits"
        [[exclude]]
        "sampler.k" = 1
        [[override]]
        where = { "sampler.k" = 2 }
        set = { sampler = { k = 3 } }
    """),
            "job.toml",
        )
    )
    got = [(c.values["seed"], c.values["sampler.k"]) for c in expansion.cells]
    assert got == [(0, 3), (0, 4), (1, 3), (1, 4)]
    assert "2 cells were identical to others after overrides; each is run once" in (
        expansion.warnings
    )


def test_warnings_for_method_tables_no_cell_uses_and_an_empty_job(fake_methods: None) -> None:
    expansion = expand(
        parse_spec(
            textwrap.dedent("""
        name = "g"
        [params]
        method = "standard"
        dataset = "digits"
        [methods.dropper]
        keep = 0.5
        [[exclude]]
        method = "standard"
    """),
            "job.toml",
        )
    )
    assert expansion.cells == []
    assert expansion.warnings == [
        "methods.dropper.keep: no cell uses method 'dropper'",
        "the job has no cells (every combination was excluded)",
    ]
