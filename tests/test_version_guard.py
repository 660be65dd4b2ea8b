"""The versions that enter cell keys move with the code: a change to the training loop or to a
method's code without a recorded decision (bump the version, or re-record the table for a
pure refactor) fails here, so old and new results never mix under one key."""

from __future__ import annotations

import copy

from tests.source_versions import code_hash, current, problems, recorded


def test_the_recorded_versions_match_the_code() -> None:
    found = problems(current(), recorded())
    assert not found, "\n".join(found)


SOURCE = '''"""A module."""

def step(x):
    """Doubles."""
    return 2 * x  # the factor
'''


def test_the_hash_ignores_comments_docstrings_and_layout_but_not_code() -> None:
    same = SOURCE.replace("# the factor", "# why two").replace('"""Doubles."""', '"""Twice."""')
    assert code_hash(same) == code_hash(SOURCE)
    assert code_hash(same.replace("return 2 * x", "return (2 *\n        x)")) == code_hash(SOURCE)
    assert code_hash(SOURCE.replace("2 * x", "3 * x")) != code_hash(SOURCE)
    assert code_hash(SOURCE.replace("2 * x", "x * 2")) != code_hash(SOURCE)


def test_a_planted_change_without_a_bump_is_caught_and_says_what_to_do() -> None:
    now = current()
    table = copy.deepcopy(now)
    assert problems(now, table) == []
    table["method:alsh_approx"]["sha256"] = "0" * 64  # the code changed since it was recorded
    [message] = problems(now, table)
    version = now["method:alsh_approx"]["version"]
    assert "method:alsh_approx" in message and f"version stayed {version}" in message
    assert "methods/registry.py" in message and "--update" in message

    table = copy.deepcopy(now)
    table["trainer"]["version"] = int(now["trainer"]["version"]) - 1  # bumped, not recorded
    [message] = problems(now, table)
    assert "trainer" in message and "same commit" in message

    table = copy.deepcopy(now)
    del table["method:dropout"]  # a new method, never recorded
    [message] = problems(now, table)
    assert "method:dropout has no recorded version" in message


def test_every_method_and_the_trainer_are_guarded_with_what_they_build_on() -> None:
    now = current()
    from methods.registry import METHODS

    assert set(now) == {"trainer"} | {f"method:{name}" for name in METHODS}
    assert "runner/run/trainer.py" in now["trainer"]["files"]  # type: ignore[operator]
    for name in METHODS:
        files = now[f"method:{name}"]["files"]
        # Its own module, the shared base, and the CNN path every method can take.
        assert {f"methods/{name}.py", "methods/base.py", "methods/cnn.py"} <= set(files)  # type: ignore[arg-type]
