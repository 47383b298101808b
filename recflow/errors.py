"""The exception tree of recflow.

    RecflowError
    ├── ConfigError          the config file (or a template in it) is wrong;
    │                        carries file, line and key path
    ├── RequestError         a callback cannot be accepted; carries the HTTP
    │                        status and a one-line public reason
    ├── BackendError         the queue or journal cannot commit (HTTP 503)
    └── ActionError          a step failed; `permanent=True` skips the attempts
                             left (bad credentials, an answer that can never
                             become audio)

Domain errors become click errors only in `recflow.cli`.
"""

from __future__ import annotations


class RecflowError(Exception):
    """Base of every error recflow raises on purpose."""


class ConfigError(RecflowError):
    """A config problem, located as precisely as the loader can.

    `str()` gives one line: ``file:line: key.path: message``.
    """

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        line: int | None = None,
        path: str | None = None,
    ) -> None:
        self.message = message
        self.file = file
        self.line = line
        self.path = path
        super().__init__(str(self))

    def __str__(self) -> str:
        where = ""
        if self.file:
            where = self.file + (f":{self.line}" if self.line else "") + ": "
        key = f"{self.path}: " if self.path else ""
        return f"{where}{key}{self.message}"


class RequestError(RecflowError):
    """A callback the receiver refuses, with the status the provider gets.

    `reason` is public and generic enough to send back; `detail` goes only
    to the log, next to the request id.
    """

    def __init__(self, status: int, reason: str, detail: str | None = None) -> None:
        self.status = status
        self.reason = reason
        self.detail = detail or reason
        super().__init__(f"{status} {reason}")


class BackendError(RecflowError):
    """The backend could not commit or answer; callers answer 503."""


class ActionError(RecflowError):
    """A step failed. Retried unless `permanent` is true."""

    def __init__(self, message: str, *, permanent: bool = False) -> None:
        self.permanent = permanent
        super().__init__(message)
