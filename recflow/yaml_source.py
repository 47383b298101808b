"""Reading a config's YAML into plain values, with the line of every key path.

`YamlReader.read` builds dicts, lists and scalars from YAML text and
records in `lines` the line where each key path (``rules[0].when``)
starts, so that any later error can be located. `${NAME}` references in
strings are expanded as they are read (see recflow.envsubst), because a
plain scalar that is one reference takes the YAML type of its value;
under `providers` values stay strings.

Hostile YAML fails as one located `ConfigError` like any other mistake:
control characters, values nested deeper than MAX_DEPTH, aliases that
expand past MAX_ALIAS_VALUES values ("billion laughs"), self-references
and merges of a mapping into itself. Duplicate keys and environment
problems do not stop the reading; they are collected in `problems`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, NoReturn

import yaml

from recflow.envsubst import expand
from recflow.errors import ConfigError, join_path

# libyaml's parser, where PyYAML was built with it, is about ten times faster
# than the pure-Python one, which dominated loading a config of many rules.
# Both give the nodes the same marks, so lines in errors are the same.
_YamlLoader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

# A config nests a dozen levels; `all`/`any`/`not` a few more each.
MAX_DEPTH = 64
# Values built again through aliases, past their first build: generous for
# anchors reused across thousands of rules, far below a "billion laughs".
MAX_ALIAS_VALUES = 100_000
_TOO_DEEP = f"nested deeper than {MAX_DEPTH} levels; expected a flatter config"
_MERGE_TAG = "tag:yaml.org,2002:merge"
_TAG_WORDS = {
    "int": "an integer",
    "float": "a number",
    "bool": "true or false",
    "timestamp": "a date",
    "binary": "base64 data",
}


class YamlReader:
    """One read of one YAML text: its line map, its problems, its environment values."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env
        self.lines: dict[str, int] = {}
        # Problems that do not stop the reading, in the order found.
        self.problems: list[ConfigError] = []
        # Values taken from the environment: the loader counts them as secrets.
        self.env_values: set[str] = set()
        # Alias bookkeeping while building (see `_build`).
        self._seen_nodes: set[int] = set()
        self._open_nodes: set[int] = set()
        self._expanded = 0

    def read(self, text: str) -> Any:
        """The document in `text` as plain values (None when empty).

        Raises `ConfigError` for what stops the reading (bad syntax, a
        refused character, a limit passed); problems that do not stop it
        are added to `problems`.
        """
        loader = None
        try:
            # The pure-Python reader checks the characters as it is made.
            loader = _YamlLoader(text)
            node = loader.get_single_node()
            if node is None:
                return None
            return self._build(loader, node, "", 0, False)
        except yaml.reader.ReaderError as exc:
            self._fail(f"YAML: {_reader_problem(exc)}", "", _line_of_character(text, exc))
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            # At the end of the stream the mark is past the last line; the
            # construct left open is on the last line that has any text.
            last = len(text.rstrip().splitlines()) or 1
            line = min(mark.line + 1, last) if mark else None
            problem = exc.problem or exc.context or "cannot parse"
            if "maximum nesting depth" in problem:
                problem = _TOO_DEEP
            self._fail(f"YAML syntax: {problem}", "", line)
        except yaml.YAMLError as exc:
            self._fail(f"YAML: {_one_line(exc)}", "")
        except RecursionError:
            # Only the pure-Python parser recurses this far: `_build` stops
            # at MAX_DEPTH and refuses self-references before Python would.
            self._fail(f"YAML: {_TOO_DEEP}", "")
        finally:
            if loader is not None:
                loader.dispose()

    def _build(
        self, loader: yaml.SafeLoader, node: yaml.Node, path: str, depth: int, repeated: bool
    ) -> Any:
        """Python data for `node`, recording the line of every key path.

        An alias builds its anchor's data again, so aliases of aliases grow
        exponentially ("billion laughs"): values built again through an
        alias are counted and refused past MAX_ALIAS_VALUES, and an alias
        used inside its own anchor is refused rather than followed forever.
        """
        line = node.start_mark.line + 1
        self.lines.setdefault(path, line)
        if depth > MAX_DEPTH:
            self._fail(f"YAML: {_TOO_DEEP}", path, line)
        if isinstance(node, yaml.ScalarNode):
            self._count_expanded(repeated, path, line)
            value = self._scalar(loader, node, path)
            if isinstance(value, str) and "${" in value:
                value = self._substitute(loader, node, value, path)
            return value
        key = id(node)
        if key in self._open_nodes:
            self._fail(
                "YAML: an alias used inside its own anchor (a self-reference); expected plain data",
                path,
                line,
            )
        repeated = repeated or key in self._seen_nodes
        self._count_expanded(repeated, path, line)
        self._seen_nodes.add(key)
        self._open_nodes.add(key)
        try:
            if isinstance(node, yaml.MappingNode):
                return self._build_mapping(loader, node, path, depth, repeated)
            items = []
            for index, item in enumerate(node.value):
                child = join_path(path, index)
                self.lines[child] = item.start_mark.line + 1
                items.append(self._build(loader, item, child, depth + 1, repeated))
            return items
        finally:
            self._open_nodes.discard(key)

    def _build_mapping(
        self, loader: yaml.SafeLoader, node: yaml.MappingNode, path: str, depth: int, repeated: bool
    ) -> dict[str, Any]:
        self._flatten(node, path, set())
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            key = str(self._scalar(loader, key_node, path))
            child = join_path(path, key)
            if key in out:
                self._error(
                    f"duplicate key {key!r}; each key may appear once",
                    child,
                    key_node.start_mark.line + 1,
                )
                continue
            self.lines[child] = key_node.start_mark.line + 1
            out[key] = self._build(loader, value_node, child, depth + 1, repeated)
        return out

    def _count_expanded(self, repeated: bool, path: str, line: int) -> None:
        if not repeated:
            return
        self._expanded += 1
        if self._expanded > MAX_ALIAS_VALUES:
            # Named by the top-level key: the path inside is alias noise,
            # and the node's own line is its anchor's.
            top = re.split(r"[.\[]", path, maxsplit=1)[0]
            self._fail(
                f"YAML: aliases expand to more than {MAX_ALIAS_VALUES} values (aliases of"
                " aliases multiply); expected a config that reuses a few anchors",
                top,
                self.lines.get(top, line),
            )

    def _scalar(self, loader: yaml.SafeLoader, node: yaml.Node, path: str) -> Any:
        """The value of a scalar (or a key), or a located error for a bad tagged value."""
        try:
            return loader.construct_object(node, deep=True)
        except yaml.YAMLError:
            raise
        except (ValueError, TypeError, KeyError, AttributeError, OverflowError):
            # PyYAML lets these out for values such as `2024-13-45` (read as a
            # date) or `!!int abc`.
            kind = str(node.tag).rpartition(":")[2]
            self._fail(
                f"YAML: cannot read {node.value!r} as {_TAG_WORDS.get(kind, kind)};"
                " quote it to keep it as text",
                path,
                node.start_mark.line + 1,
            )

    def _flatten(self, node: yaml.MappingNode, path: str, active: set[int]) -> None:
        """Resolve the `<<` merge keys of `node` in place, each key kept once.

        PyYAML's `flatten_mapping` keeps every merged key, so merges of
        merges grow exponentially; here a key the mapping sets itself, or
        an earlier merged mapping set, wins and the others are dropped.
        """
        own: list[tuple[yaml.Node, yaml.Node]] = []
        sources: list[yaml.MappingNode] = []
        for key_node, value_node in node.value:
            if key_node.tag != _MERGE_TAG:
                own.append((key_node, value_node))
                continue
            merged = value_node.value if isinstance(value_node, yaml.SequenceNode) else [value_node]
            for source in merged:
                line = source.start_mark.line + 1
                if not isinstance(source, yaml.MappingNode):
                    self._fail("YAML: << merges a mapping or a list of mappings only", path, line)
                if id(source) in active or source is node:
                    self._fail("YAML: << merges a mapping into itself", path, line)
                active.add(id(node))
                self._flatten(source, path, active)
                active.discard(id(node))
                sources.append(source)
        if not sources:
            return
        taken = {_key_text(k) for k, _ in own}
        merged_items: list[tuple[yaml.Node, yaml.Node]] = []
        for source in sources:
            for key_node, value_node in source.value:
                text = _key_text(key_node)
                if text not in taken:
                    taken.add(text)
                    merged_items.append((key_node, value_node))
        node.value = merged_items + own

    def _substitute(self, loader: yaml.SafeLoader, node: yaml.Node, text: str, path: str) -> Any:
        found = expand(text, self.env)
        for problem in found.problems:
            self._error(problem, path, node.start_mark.line + 1)
        result = found.text
        # A plain (unquoted) `workers: ${WORKERS}` should be a number, as if
        # written in place; quoted strings and credentials stay strings.
        # A plain scalar's style is None from PyYAML's parser, "" from libyaml's.
        plain = not getattr(node, "style", None)
        if plain and found.whole and not path.startswith("providers"):
            tag = loader.resolve(yaml.ScalarNode, result, (True, False))
            value = loader.construct_object(yaml.ScalarNode(tag, result), deep=True)
            if not isinstance(value, str):
                # A number or true/false is no secret: masking it would blank
                # every "4" in the logs for `workers: ${WORKERS:-4}`.
                return value
        self.env_values.update(found.values)
        return result

    def _error(self, message: str, path: str, line: int) -> None:
        self.problems.append(ConfigError(message, line=line, path=path or None))

    def _fail(self, message: str, path: str, line: int | None = None) -> NoReturn:
        raise ConfigError(message, line=line or self.lines.get(path), path=path or None)


def _key_text(node: yaml.Node) -> Any:
    """What tells two mapping keys apart before they are built."""
    return node.value if isinstance(node, yaml.ScalarNode) else id(node)


def _reader_problem(exc: yaml.reader.ReaderError) -> str:
    if isinstance(exc.character, int):
        return (
            f"unacceptable character #x{exc.character:04x}; control characters other than"
            " tab and newline are not allowed in YAML: remove it"
        )
    return _one_line(exc)


def _line_of_character(text: str, exc: yaml.reader.ReaderError) -> int | None:
    """The line of the character the reader refused.

    libyaml counts `position` in bytes, PyYAML in characters; the first
    occurrence of the refused character is the one both stopped at.
    """
    if not isinstance(exc.character, int):
        return None
    index = text.find(chr(exc.character))
    return text.count("\n", 0, index) + 1 if index >= 0 else None


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__
