"""The Ray executor's advice when it cannot join a cluster."""

from __future__ import annotations

from runner.executors import _connection_hint


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
