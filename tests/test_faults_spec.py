"""Malformed job files, generated at random (hypothesis): whatever the file holds, the answer is
a job or a clear spec error whose every problem names its key (or the TOML error), never a
traceback; and the CLI prints that error as it is, exit code 2.

Three kinds of input: TOML documents with random keys, values and types, anywhere; the valid
quickstart-like job with random edits (to reach the deeper checks and the grid expansion);
and text or bytes that are not TOML at all."""

from __future__ import annotations

import datetime as dt
import json
import math
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from methods.registry import METHODS
from runner.cli.main import main
from runner.errors import CpusweepError, SpecError
from runner.job.grid import expand
from runner.job.spec import _TOP_LEVEL, RESOURCE_PARAMS, SHARED_PARAMS, load_spec, parse_spec

EXAMPLES = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

# --- writing TOML (tomllib only reads it) --------------------------------------------------------


def toml_string(text: str) -> str:
    out = json.dumps(text, ensure_ascii=False)  # \" \\ \n \t \uXXXX: the same in TOML
    return out.replace("\x7f", "\\u007f")  # DEL is a control character TOML wants escaped


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return toml_string(value)
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return (
            "{" + ", ".join(f"{toml_string(k)} = {toml_value(v)}" for k, v in value.items()) + "}"
        )
    raise TypeError(value)


def toml_document(doc: dict[str, Any]) -> str:
    return "".join(f"{toml_string(k)} = {toml_value(v)}\n" for k, v in doc.items())


# --- what the documents are made of ------------------------------------------------------------

KNOWN_KEYS = sorted(
    {
        *_TOP_LEVEL,
        "where",
        "set",
        *(p.name for p in SHARED_PARAMS),
        *(p.name for p in RESOURCE_PARAMS),
        *METHODS,
        *(f"{m}.{p.name}" for m, info in METHODS.items() for p in info.params),
        *(p.name for info in METHODS.values() for p in info.params),
    }
)
KNOWN_STRINGS = sorted(
    {
        *METHODS,
        "digits",
        "mnist",
        "cifar10",
        "mlp",
        "cnn",
        "sgd",
        "adam",
        "batch",
        "sample",
        "forward",
        "backward",
        "[/x]",
        "__import__('os').system('true')",
    }
)
text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)
keys = st.one_of(st.sampled_from(KNOWN_KEYS), text)
scalars = st.one_of(
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.integers(min_value=-3, max_value=30),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(KNOWN_STRINGS),
    text,
    st.datetimes(min_value=dt.datetime(1, 1, 1), max_value=dt.datetime(9999, 12, 31)),
    st.dates(),
    st.times(),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(keys, inner, max_size=3),
    ),
    max_leaves=12,
)
documents = st.dictionaries(keys, values, max_size=6)

BASE: dict[str, Any] = {
    "name": "random",
    "grid": {"method": ["standard", "mc_approx"], "depth": [1, 2], "mc_approx": {"k": [5]}},
    "params": {"dataset": "digits", "epochs": 1, "width": 8},
    "methods": {"dropout": {"keep": 0.5}},
    "override": [{"where": {"depth": 1}, "set": {"lr": 0.1}}],
    "exclude": [{"method": "standard", "depth": 2}],
    "resources": {"memory_gb": 0.5, "checkpoint_every": 1},
}


@st.composite
def edited_jobs(draw: st.DrawFn) -> dict[str, Any]:
    """The valid BASE job with a few random edits: a value replaced, a key added or removed,
    anywhere in it."""
    doc = json.loads(json.dumps(BASE))
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        # Walk to a random table of the document.
        table: Any = doc
        while True:
            tables = [v for v in (table.values() if isinstance(table, dict) else table)]
            tables = [v for v in tables if isinstance(v, dict | list) and v]
            if not tables or draw(st.booleans()):
                break
            table = draw(st.sampled_from(tables))
        if isinstance(table, list):
            index = draw(st.integers(min_value=0, max_value=len(table) - 1))
            table[index] = draw(values)
            continue
        action = draw(st.sampled_from(["replace", "add", "remove"]))
        if action == "remove" and table:
            del table[draw(st.sampled_from(sorted(table)))]
        elif action == "replace" and table:
            table[draw(st.sampled_from(sorted(table)))] = draw(values)
        else:
            table[draw(keys)] = draw(values)
    return doc


def _all_keys(value: Any) -> set[str]:
    found: set[str] = set()
    if isinstance(value, dict):
        for key, inner in value.items():
            found.add(key)
            found |= _all_keys(inner)
    elif isinstance(value, list):
        for inner in value:
            found |= _all_keys(inner)
    return found


def check(text: str, doc: dict[str, Any] | None) -> None:
    """The property: a job whose cells expand, or a SpecError whose every problem starts with
    a key of the document (or a parameter the job lacks), or with the TOML error."""
    try:
        spec = parse_spec(text, "random.toml")
    except SpecError as exc:
        assert exc.problems
        written = _all_keys(doc or {})  # as written, or quoted where that would not read
        names = {k for k in written if k} | {json.dumps(k) for k in written}
        names |= {"name", *(p.name for p in SHARED_PARAMS)}
        for problem in exc.problems:
            assert problem.startswith("not valid TOML") or any(
                problem.startswith(name) for name in names
            ), problem
        assert str(exc).startswith("random.toml: ")
        return
    try:
        cells = expand(spec).cells
    except CpusweepError:
        return
    assert all(len(cell.key) == 16 for cell in cells)


@EXAMPLES
@given(documents)
def test_random_toml_documents(doc: dict[str, Any]) -> None:
    check(toml_document(doc), doc)


@EXAMPLES
@given(edited_jobs())
def test_random_edits_of_a_valid_job(doc: dict[str, Any]) -> None:
    check(toml_document(doc), doc)


def test_the_unedited_base_job_is_valid() -> None:
    """So that the edits above start from a job that passes."""
    assert len(expand(parse_spec(toml_document(BASE))).cells) == 3


@EXAMPLES
@given(st.text(max_size=200))
def test_random_text(text: str) -> None:
    check(text, None)


@settings(max_examples=50, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_in_a_file(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "job.toml"
        path.write_bytes(data)
        try:
            load_spec(path)
        except SpecError as exc:
            assert str(exc).startswith(f"{path}: ")


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(doc=st.one_of(documents, edited_jobs()))
def test_the_cli_answers_every_document_plainly(
    doc: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    """Through `plan`, printed by rich: exit code 0 or 2, never a traceback."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "job.toml"
        path.write_text(toml_document(doc), encoding="utf-8")
        code = main(["plan", str(path), "--results", str(Path(folder) / "results")])
    err = capsys.readouterr().err
    assert code in (0, 2)
    if code == 2:
        assert err.startswith("error: ") and f"{path}: " in err
