"""The client's failures, each with the exit code `pvc` ends with.

Exit codes: 0 success; 1 the API refused or failed the request (its `message` is printed), or a
VM failed while waiting; 2 a usage or configuration problem (click uses 2 for usage errors too);
3 the API cannot be reached; 4 authentication required or failed; 5 `--wait` timed out.
"""

from __future__ import annotations

from typing import Any


class CliError(Exception):
    exit_code = 1


class ApiFailure(CliError):
    """The API answered with a failure (510, 404, ...): `message` is the API's own text."""

    def __init__(self, message: str, status: int, detail: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.detail = detail or {}  # the answer's JSON document, e.g. its `wait` report


class ConfigProblem(CliError):
    """The connection cannot be determined: bad config file, unknown name, no URL, bad file."""

    exit_code = 2


class ApiUnreachable(CliError):
    exit_code = 3


class ApiConnectionLost(ApiUnreachable):
    """The request was sent, but the connection failed before an answer came (the API may have
    acted on it)."""


class AuthenticationFailed(CliError):
    exit_code = 4


class WaitTimedOut(CliError):
    exit_code = 5
