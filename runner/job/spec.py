"""Job files: TOML in, a validated `JobSpec` out, with every problem reported at once.

The format, in one place (docs/job-files.md shows a full example):

    name = "quickstart"                 # required; names the results folder
    description = "..."                 # optional

    [grid]                              # axes: every key is a list; cells = cartesian product
    method = ["standard", "dropout"]
    depth = [1, 3]
    [grid.dropout]                      # an axis over one method's hyperparameter: it
    keep = [0.05, 0.5]                  # multiplies only that method's cells

    [params]                            # scalars shared by every cell (any axis may be here)
    dataset = "digits"
    epochs = 5

    [methods.mc_approx]                 # one method's hyperparameters
    k = 10

    [[override]]                        # change parameters for the cells that match
    where = { method = "mc_approx", batch_size = 1 }
    set = { lr = 1e-4 }

    [[exclude]]                         # drop the cells that match
    method = "alsh_approx"
    batch_size = 20

    [resources]
    cpus_per_cell = 1
    torch_threads = 1
    memory_gb = 2.0
    checkpoint_every = 1                # epochs between mid-cell checkpoints; 0 = none

Matching (`where` and `exclude`): a cell matches when every listed key has the listed value
(or one of the values, when a list is given). Overrides are matched against the cell before
any override and applied in file order, later ones winning; excludes are matched against the
final cell. A method hyperparameter is named `<method>.<param>` everywhere (in `where`,
`set`, and as a column of the results), and only cells of that method carry it.
"""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from methods.registry import METHODS
from runner.datasets.registry import DATASETS
from runner.errors import SpecError
from runner.job.params import Param, params_by_name

# Parameters every cell has. Defaults are the paper's (§9.4) unless said otherwise.
SHARED_PARAMS: tuple[Param, ...] = (
    # Live views of the registries, so valid choices always list what is registered.
    Param("method", str, None, "training method", choices=METHODS.keys()),
    Param("dataset", str, None, "dataset", choices=DATASETS.keys()),
    Param(
        "arch",
        str,
        "mlp",
        "mlp: `depth` hidden ReLU layers of `width` units; cnn: "
        "ResNet-18 (CIFAR variant) then 2 fully connected layers (paper §8)",
        choices=("mlp", "cnn"),
    ),
    Param("depth", int, 3, "hidden layers (paper: 1..7, 3 by default)", minimum=1, maximum=64),
    Param("width", int, 1000, "units per hidden layer (paper: 1000)", minimum=1),
    Param("batch_size", int, 1, "examples per step (paper: 1 for SGD, 20 mini-batch)", minimum=1),
    Param(
        "lr",
        float,
        1e-3,
        "learning rate (paper: 1e-3; 1e-4 for MC-APPROX at batch 1)",
        minimum=0.0,
        exclusive_minimum=True,
    ),
    Param(
        "optimizer",
        str,
        "sgd",
        "sgd (paper text) or adam (paper: ALSH-APPROX)",
        choices=("sgd", "adam"),
    ),
    Param("momentum", float, 0.0, "SGD momentum (paper: plain SGD, 0)", minimum=0.0, maximum=0.999),
    Param("epochs", int, 50, "training epochs (paper: 50)", minimum=1),
    Param("seed", int, 0, "seeds weights, shuffling and every sampling step", minimum=0),
    Param("split_seed", int, 0, "seeds the validation split; the same for every method", minimum=0),
    Param(
        "train_limit",
        int,
        None,
        "train on a random N of the training examples, the same for every cell of a "
        "split_seed (quick jobs)",
        minimum=1,
        optional=True,
    ),
)
SHARED = params_by_name(SHARED_PARAMS)

# Identity of what is trained: an override may not change these.
_NOT_OVERRIDABLE = ("method", "dataset")

_TOP_LEVEL = (
    "name",
    "description",
    "grid",
    "params",
    "methods",
    "override",
    "exclude",
    "resources",
)
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


@dataclass(frozen=True)
class Resources:
    """What each cell is given. Admission control in Ray, enforced threads in the cell."""

    cpus_per_cell: float = 1.0
    torch_threads: int = 1
    memory_gb: float = 2.0
    max_in_flight: int = 0  # cells submitted at once; 0 = twice the cluster's CPU slots
    checkpoint_every: int = 1  # epochs between a running cell's checkpoints; 0 = none
    pin_cores: bool = False  # each running cell's threads on cores of its own
    # Each cell stops after the epoch that crosses this many minutes (runner/results/stops.py);
    # None: no budget. Not part of the cell key.
    max_cell_minutes: float | None = None


RESOURCE_PARAMS: tuple[Param, ...] = (
    Param(
        "cpus_per_cell", float, 1.0, "Ray num_cpus per cell", minimum=0.0, exclusive_minimum=True
    ),
    Param(
        "torch_threads",
        int,
        1,
        "torch intra-op threads inside a cell (enforced, recorded)",
        minimum=1,
    ),
    Param(
        "memory_gb",
        float,
        2.0,
        "Ray memory resource per cell, GiB",
        minimum=0.0,
        exclusive_minimum=True,
    ),
    Param("max_in_flight", int, 0, "cells submitted at once (0 = 2 x CPU slots)", minimum=0),
    Param(
        "max_cell_minutes",
        float,
        None,
        "stop a cell after the epoch that crosses this many minutes (flagged, not in the key)",
        minimum=0.0,
        exclusive_minimum=True,
        optional=True,
    ),
    Param(
        "checkpoint_every",
        int,
        1,
        "save each running cell's state every N epochs, to resume it mid-way (0 = never)",
        minimum=0,
    ),
    Param(
        "pin_cores",
        bool,
        False,
        "pin each running cell (all its threads) to ceil(cpus_per_cell) cores of its own",
    ),
)


@dataclass(frozen=True)
class Override:
    where: dict[str, list[Any]]  # flat name -> accepted values
    set: dict[str, Any]  # flat name -> value


@dataclass(frozen=True)
class JobSpec:
    name: str
    description: str
    source: str
    text: str
    axes: dict[str, list[Any]]  # flat name -> values, in file order
    params: dict[str, Any]  # flat name -> scalar
    overrides: list[Override] = field(default_factory=list)
    excludes: list[dict[str, list[Any]]] = field(default_factory=list)
    resources: Resources = field(default_factory=Resources)


def param_for(flat_name: str) -> Param | None:
    """The declared parameter behind a flat name (`lr`, `mc_approx.k`), or None."""
    if "." in flat_name:
        method, _, hyper = flat_name.partition(".")
        info = METHODS.get(method)
        if info is None:
            return None
        return params_by_name(info.params).get(hyper)
    return SHARED.get(flat_name)


_PLAIN_KEY = re.compile(r"[A-Za-z0-9_.-]+")


def _k(key: str) -> str:
    """A key as the user wrote it, quoted when it would not read as one in a message (empty,
    or with spaces, colons, quotes or control characters in it)."""
    return key if _PLAIN_KEY.fullmatch(key) else json.dumps(key)


def _valid_names_hint() -> str:
    return "valid: " + ", ".join(SHARED) + " (and a table per method: " + ", ".join(METHODS) + ")"


class _Collector:
    """Accumulates problems so that the user sees all of them in one run."""

    def __init__(self) -> None:
        self.problems: list[str] = []

    def add(self, message: str | None) -> None:
        if message:
            self.problems.append(message)

    def check_value(self, flat: str, value: Any, where: str) -> Any:
        param = param_for(flat)
        if param is None:
            self.add(f"{where}: unknown parameter {flat!r}")
            return value
        problem = param.problem(value, where)
        self.add(problem)
        return value if problem else param.normalise(value)


def _flatten(table: Mapping[str, Any], where: str, out: _Collector) -> dict[str, Any]:
    """`{lr: 1, mc_approx: {k: 5}}` -> `{"lr": 1, "mc_approx.k": 5}` (one level of methods)."""
    flat: dict[str, Any] = {}

    def put(name: str, value: Any) -> None:
        if name in flat:  # e.g. "dropout.keep" = [...] beside [grid.dropout] keep = [...]
            out.add(f"{where}.{_k(name)}: given twice (dotted and as a table); keep one")
        flat[name] = value

    for key, value in table.items():
        if isinstance(value, dict):
            if key not in METHODS:
                out.add(
                    f"{where}.{_k(key)}: a table here must be named after a method "
                    f"({', '.join(METHODS)}), got {key!r}"
                )
                continue
            for hyper, hv in value.items():
                if isinstance(hv, dict):
                    out.add(f"{where}.{_k(key)}.{_k(hyper)}: nested tables are not allowed here")
                    continue
                put(f"{key}.{hyper}", hv)
        else:
            put(key, value)
    return flat


def _check_name(flat: str, where: str, out: _Collector) -> bool:
    if param_for(flat) is not None:
        return True
    if "." in flat:
        method, _, hyper = flat.partition(".")
        if method in METHODS:
            valid = ", ".join(p.name for p in METHODS[method].params) or "none"
            out.add(f"{where}: {method!r} has no hyperparameter {hyper!r} (valid: {valid})")
            return False
    out.add(f"{where}: unknown parameter {flat!r}; {_valid_names_hint()}")
    return False


def _parse_where(table: Any, where: str, out: _Collector) -> dict[str, list[Any]]:
    if not isinstance(table, dict) or not table:
        out.add(f"{where}: expected a non-empty table of parameter = value(s)")
        return {}
    clause: dict[str, list[Any]] = {}
    for flat, value in _flatten(table, where, out).items():
        if not _check_name(flat, f"{where}.{_k(flat)}", out):
            continue
        values = value if isinstance(value, list) else [value]
        if not values:
            out.add(f"{where}.{_k(flat)}: an empty list matches nothing")
            continue
        clause[flat] = [out.check_value(flat, v, f"{where}.{_k(flat)}") for v in values]
    return clause


def _parse_resources(table: Any, out: _Collector) -> Resources:
    if table is None:
        return Resources()
    if not isinstance(table, dict):
        out.add("resources: expected a table")
        return Resources()
    known = params_by_name(RESOURCE_PARAMS)
    values: dict[str, Any] = {}
    for key, value in table.items():
        param = known.get(key)
        if param is None:
            out.add(f"resources.{_k(key)}: unknown key; valid: {', '.join(known)}")
            continue
        problem = param.problem(value, f"resources.{key}")
        out.add(problem)
        if not problem:
            values[key] = param.normalise(value)
    return Resources(**values)


def parse_spec(text: str, source: str = "<job>") -> JobSpec:
    """Validate a job file's text. Raises SpecError listing every problem found."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(source, [f"not valid TOML: {exc}"]) from None
    out = _Collector()

    for key in doc:
        if key not in _TOP_LEVEL:
            hint = " (did you mean [params]?)" if key in SHARED else ""
            out.add(f"{_k(key)}: unknown top-level key{hint}; valid: {', '.join(_TOP_LEVEL)}")

    name = doc.get("name")
    if name is None:
        out.add('name: missing; add e.g. name = "my-sweep" (it names the results folder)')
    elif not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        out.add(
            f"name: {name!r} must be an ASCII letter or digit followed by up to 99 letters, "
            "digits, '.', '_' or '-' (it becomes a folder name)"
        )
    description = doc.get("description", "")
    if not isinstance(description, str):
        out.add("description: expected a string")
        description = ""

    # [grid]: every value a non-empty list of valid, distinct values.
    axes: dict[str, list[Any]] = {}
    grid = doc.get("grid", {})
    if not isinstance(grid, dict):
        out.add("grid: expected a table of axis = [values]")
        grid = {}
    for flat, values in _flatten(grid, "grid", out).items():
        where = f"grid.{_k(flat)}"
        if not _check_name(flat, where, out):
            continue
        if not isinstance(values, list):
            out.add(
                f"{where}: an axis needs a list of values, e.g. {flat} = [{values!r}]; "
                "put a single value under [params] instead"
            )
            continue
        if not values:
            out.add(f"{where}: an axis needs at least one value")
            continue
        checked = [out.check_value(flat, v, f"{where}[{i}]") for i, v in enumerate(values)]
        if len(set(map(repr, checked))) != len(checked):
            out.add(f"{where}: repeated values {values!r}")
        axes[flat] = checked

    # [params] and [methods.X]: scalars.
    params: dict[str, Any] = {}
    raw_params = doc.get("params", {})
    if not isinstance(raw_params, dict):
        out.add("params: expected a table of name = value")
        raw_params = {}
    for key, value in raw_params.items():
        where = f"params.{_k(key)}"
        if isinstance(value, dict):
            out.add(f"{where}: method hyperparameters go in a [methods.{key}] table")
            continue
        if not _check_name(key, where, out):
            continue
        if isinstance(value, list):
            out.add(f"{where}: a list here is ambiguous; to sweep it, move it to [grid]")
            continue
        params[key] = out.check_value(key, value, where)
    raw_methods = doc.get("methods", {})
    if not isinstance(raw_methods, dict):
        out.add("methods: expected tables named after methods, e.g. [methods.mc_approx]")
        raw_methods = {}
    for method, table in raw_methods.items():
        if method not in METHODS:
            out.add(f"methods.{_k(method)}: unknown method; valid: {', '.join(METHODS)}")
            continue
        if not isinstance(table, dict):
            out.add(f"methods.{method}: expected a table of hyperparameter = value")
            continue
        for hyper, value in table.items():
            flat = f"{method}.{hyper}"
            if not _check_name(flat, f"methods.{_k(flat)}", out):
                continue
            if isinstance(value, list):
                out.add(f"methods.{_k(flat)}: to sweep it, use [grid.{method}] {_k(hyper)} = [...]")
                continue
            params[flat] = out.check_value(flat, value, f"methods.{_k(flat)}")

    for flat in set(axes) & set(params):
        out.add(f"{flat}: set both as an axis in [grid] and as a scalar; keep one")
    for param in SHARED_PARAMS:
        if param.required and param.name not in axes and param.name not in params:
            choices = ", ".join(map(str, param.choices or ()))
            out.add(
                f"{param.name}: required; set it in [params] or as a [grid] axis (valid: {choices})"
            )

    overrides: list[Override] = []
    raw_overrides = doc.get("override", [])
    if not isinstance(raw_overrides, list):
        out.add("override: use [[override]] tables (an array of tables)")
        raw_overrides = []
    for i, entry in enumerate(raw_overrides):
        where = f"override[{i}]"
        if not isinstance(entry, dict):
            out.add(f"{where}: expected a table with `where` and `set`")
            continue
        for key in entry:
            if key not in ("where", "set"):
                out.add(f"{where}.{_k(key)}: unknown key; an override has `where` and `set`")
        clause = _parse_where(entry.get("where"), f"{where}.where", out)
        raw_set = entry.get("set")
        changes: dict[str, Any] = {}
        if not isinstance(raw_set, dict) or not raw_set:
            out.add(f"{where}.set: expected a non-empty table of parameter = value")
        else:
            for flat, value in _flatten(raw_set, f"{where}.set", out).items():
                if not _check_name(flat, f"{where}.set.{_k(flat)}", out):
                    continue
                if flat in _NOT_OVERRIDABLE:
                    out.add(
                        f"{where}.set.{_k(flat)}: an override cannot change what is trained; "
                        "use [grid] or [[exclude]]"
                    )
                    continue
                changes[flat] = out.check_value(flat, value, f"{where}.set.{_k(flat)}")
        overrides.append(Override(where=clause, set=changes))

    excludes: list[dict[str, list[Any]]] = []
    raw_excludes = doc.get("exclude", [])
    if not isinstance(raw_excludes, list):
        out.add("exclude: use [[exclude]] tables (an array of tables)")
        raw_excludes = []
    for i, entry in enumerate(raw_excludes):
        excludes.append(_parse_where(entry, f"exclude[{i}]", out))

    resources = _parse_resources(doc.get("resources"), out)

    if out.problems:
        raise SpecError(source, out.problems)
    assert isinstance(name, str)
    return JobSpec(
        name=name,
        description=description,
        source=source,
        text=text,
        axes=axes,
        params=params,
        overrides=overrides,
        excludes=excludes,
        resources=resources,
    )


def load_spec(path: str | Path) -> JobSpec:
    """Read and validate a job file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(str(path), ["file not found; check the path"]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(str(path), [f"cannot be read: {exc}"]) from None
    return parse_spec(text, str(path))
