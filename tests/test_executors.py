"""The Ray executor's advice when it cannot join a cluster, and how fast it gives it."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from runner.errors import ExecutorError
from runner.run.executors import _check_reachable, _connection_hint
from tests.faults import run_cli


def _raised(exc: BaseException, cause: BaseException) -> BaseException:
    try:
        raise exc from cause
    except BaseException as caught:
        return caught


def test_joining_without_the_token_says_which_variables_to_set() -> None:
    # What Ray 2.60's ray.init(address=...) raises against a cluster with token authentication
    # when no token is presented (captured from a real loopback cluster).
    cause = RuntimeError(
        "Failed to connect to GCS. Last connection error: Traceback (most recent call last):\n"
        "ray.exceptions.AuthenticationError: RPC error: InvalidAuthToken: Authentication token "
        "is missing or incorrect. Note: RAY_AUTH_MODE is currently 'disabled' (not 'token')."
    )
    hint = _connection_hint(
        _raised(ConnectionError("Failed to connect to Ray cluster at 127.0.0.1:1"), cause)
    )
    assert "RAY_AUTH_MODE=token" in hint and "RAY_AUTH_TOKEN=" in hint
    assert "RAY_AUTH_TOKEN_PATH" in hint


def test_other_connection_failures_point_at_the_cluster() -> None:
    hint = _connection_hint(_raised(ConnectionError("refused"), OSError("connection refused")))
    assert "ray status" in hint and "TOKEN" not in hint


def test_an_address_where_nothing_listens_fails_fast(tmp_path: Path) -> None:
    """Ray would retry for minutes; the runner says at once what to check (exit code 2)."""
    with socket.socket() as probe:  # a loopback port that was free a moment ago
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    job = tmp_path / "j.toml"
    job.write_text('name = "j"\n[params]\nmethod = "standard"\ndataset = "digits"\n')
    for address in (f"127.0.0.1:{port}", f"ray://127.0.0.1:{port}"):
        started = time.monotonic()
        code, output = run_cli(["submit", str(job), "--address", address], cwd=tmp_path)
        assert code == 2, output
        said = " ".join(output.split())
        assert f"nothing answers at {address}" in said and "Traceback" not in said
        assert time.monotonic() - started < 60
    with pytest.raises(ExecutorError, match="nothing answers"):
        _check_reachable(f"localhost:{port}")
    _check_reachable("auto")  # left to Ray
