"""Every hook a plugin can implement is documented and exercised by a test.

A hook that `docs/plugins.md` does not describe cannot be used by anyone
but its author; one that no test implements may have quietly stopped
firing. This meta-test fails in either case, naming the hook.
"""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

from recflow import hookspecs

TESTS = Path(__file__).parent
DOCS = TESTS.parent / "docs" / "plugins.md"

HOOKS = sorted(
    name
    for name, function in inspect.getmembers(hookspecs, inspect.isfunction)
    if hasattr(function, "recflow_spec")
)


def test_hooks_are_found() -> None:
    assert {"register_actions", "register_commands", "step_failed"} <= set(HOOKS)


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_has_a_docstring(hook: str) -> None:
    doc = inspect.getdoc(getattr(hookspecs, hook)) or ""
    assert len(doc.split()) >= 8, f"hook {hook} needs a docstring a plugin author can act on"


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_is_documented(hook: str) -> None:
    docs = DOCS.read_text(encoding="utf-8")
    # A heading of its own in the hook reference, e.g. "### `step_failed(...)`".
    heading = re.compile(rf"^#+ .*`{hook}\(", re.MULTILINE)
    assert heading.search(docs), f"hook {hook} has no section in {DOCS.name}"


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_is_exercised_by_a_test(hook: str) -> None:
    # A test implements the hook: a function of that name, in a test module
    # or in one of the test plugins the tests install.
    implementation = re.compile(rf"def {hook}\(|{hook}=")
    me = Path(__file__).resolve()
    sources = [p for p in TESTS.rglob("*.py") if p.resolve() != me]
    users = [p.name for p in sources if implementation.search(p.read_text(encoding="utf-8"))]
    assert users, f"no test implements hook {hook}"
