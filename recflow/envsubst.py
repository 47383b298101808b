"""Expansion of `${NAME}` and `${NAME:-default}` references from the environment.

`expand(text, env)` gives the expanded text, whether the text was one
reference and nothing else, the problems found (an unset variable, a
malformed or unclosed reference), and every value taken from the
environment, so that the loader can count them as secrets. `$${NAME}`
is the literal text `${NAME}`. Pure: the environment is passed in.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclasses.dataclass
class Expansion:
    """One string with its environment references expanded."""

    text: str = ""
    whole: bool = False  # the string was exactly one reference
    problems: list[str] = dataclasses.field(default_factory=list)
    values: set[str] = dataclasses.field(default_factory=set)  # taken from the environment


class _Unclosed(Exception):
    """A `${` without its `}`."""


def expand(text: str, env: Mapping[str, str]) -> Expansion:
    """Expand `${NAME}`, `${NAME:-default}` and `$${...}` (literal) in `text`.

    A default may hold references and balanced braces of its own
    (`${URL:-mailto://u:${PASSWORD}@host}`); it is expanded only when used,
    so a reference in an unused default need not be set.
    """
    found = Expansion()
    try:
        found.text, _ = _scan(text, 0, env, found, nested=False)
    except _Unclosed:
        found.problems.append(
            "unclosed ${ (no matching }); close it, or write $${ for a literal ${"
        )
    return found


def _scan(
    text: str, start: int, env: Mapping[str, str], found: Expansion, *, nested: bool
) -> tuple[str, int]:
    """Expand from `start`; inside a default (`nested`) stop at its closing brace.

    Returns the expanded text and the index where scanning stopped (the
    closing brace, when `nested`).
    """
    out: list[str] = []
    index, depth = start, 0
    while index < len(text):
        if text.startswith("$${", index):
            close = text.find("}", index)
            stop = len(text) if close < 0 else close + 1
            out.append(text[index + 1 : stop])
            index = stop
        elif text.startswith("${", index):
            value, end = _reference(text, index, env, found)
            found.whole = not nested and index == 0 and end == len(text)
            out.append(value)
            index = end
        else:
            char = text[index]
            if nested and char == "}":
                if depth == 0:
                    return "".join(out), index
                depth -= 1
            elif nested and char == "{":
                depth += 1
            out.append(char)
            index += 1
    if nested:
        raise _Unclosed
    return "".join(out), index


def _reference(text: str, start: int, env: Mapping[str, str], found: Expansion) -> tuple[str, int]:
    """The value of the reference at `start` (its `${`) and the index after its `}`."""
    body = start + 2
    match = _NAME.match(text, body)
    name = match.group(0) if match else ""
    after = body + len(name)
    if name and text.startswith("}", after):
        value = env.get(name)
        if value is None:
            found.problems.append(
                f"environment variable {name} is not set; set it, or write ${{{name}:-default}}"
            )
            return "", after + 1
        if value:
            found.values.add(value)
        return value, after + 1
    if name and text.startswith(":-", after):
        used = Expansion()
        default, close = _scan(text, after + 2, env, used, nested=True)
        value = env.get(name)
        if value:
            found.values.add(value)
            return value, close + 1
        found.problems.extend(used.problems)
        found.values.update(used.values)
        return default, close + 1
    close = text.find("}", body)
    if close < 0:
        raise _Unclosed
    found.problems.append(
        f"malformed reference ${{{text[body:close]}}}; expected ${{NAME}} or ${{NAME:-default}}"
    )
    return "", close + 1
