"""The exception tree of recflow.

    RecflowError
    ├── ConfigError          the config file (or a template in it) is wrong;
    │                        carries file, line and key path
    ├── TemplateError        a step's parameters cannot be rendered for an
    │                        event (an undefined name, a failing filter)
    ├── RequestError         a callback cannot be accepted; carries the HTTP
    │                        status and a one-line public reason
    ├── BackendError         the queue or journal cannot commit (HTTP 503)
    └── ActionError          a step failed; `permanent=True` skips the attempts
                             left (bad credentials, an answer that can never
                             become audio)

Domain errors become click errors only in `recflow.cli`.
"""

from __future__ import annotations

from collections.abc import Sequence


class RecflowError(Exception):
    """Base of every error recflow raises on purpose."""


class ConfigError(RecflowError):
    """A config problem, located as precisely as the loader can.

    `str()` gives one line: ``file:line: key.path: message``. When the
    loader found several problems at once, this error is the first and
    `others` holds the rest, so `recflow check` can list them all.
    """

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        line: int | None = None,
        path: str | None = None,
        others: Sequence[ConfigError] = (),
    ) -> None:
        self.message = message
        self.file = file
        self.line = line
        self.path = path
        self.others = tuple(others)
        super().__init__(str(self))

    @property
    def all(self) -> tuple[ConfigError, ...]:
        """This error and the others found with it, in file order."""
        return (self, *self.others)

    def __str__(self) -> str:
        where = ""
        if self.file:
            where = self.file + (f":{self.line}" if self.line else "") + ": "
        key = f"{self.path}: " if self.path else ""
        return f"{where}{key}{self.message}"


class TemplateError(RecflowError):
    """A step's parameters could not be rendered; the message is one line."""


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


def join_path(parent: str, key: str | int) -> str:
    """The key path of `key` inside `parent`, as config errors spell it.

    `join_path("rules", 0)` is ``rules[0]``; `join_path("rules[0]", "when")`
    is ``rules[0].when``. The loader, the rules and the templates all build
    paths with it, so an error's path finds its line in the loader's map.
    """
    if isinstance(key, int):
        return f"{parent}[{key}]"
    return f"{parent}.{key}" if parent else key
