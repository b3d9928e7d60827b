"""Safe, bounded YAML parsing that remembers which line each field came from.

Specs come from anyone who can submit, so parsing is the first line of defence: libyaml's C
parser (a 64 KiB spec parses in tens of milliseconds, where pure-Python PyYAML takes most of a
second), the safe constructor (no `!!python/...` tags), and one pass over the parser's events
that refuses aliases and deep nesting before any node is built.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NoReturn

import yaml

from jobs.settings import limits
from jobs.spec_errors import FieldError, SpecError

# A spec nests about six levels deep; the composer builds nested nodes by recursion, so deeper
# input could only exhaust its stack.
MAX_NESTING = 32
# No spec field needs more, and a longer integer cannot round-trip: Python refuses to turn
# integers of over 4300 digits into text, for JSON or for an error message.
INTEGER_BITS = 64


@dataclass
class YamlSource:
    """Line numbers (1-based) of every mapping key in a YAML document, by dotted path."""

    lines: dict[str, int] = field(default_factory=dict)

    def line_of(self, path: str) -> int | None:
        parts = path.split(".") if path else []
        while parts:  # fall back to the nearest enclosing key the document has
            line = self.lines.get(".".join(parts))
            if line is not None:
                return line
            parts.pop()
        return None


def parse_yaml(text: str | bytes, source_name: str = "<spec>") -> tuple[Any, YamlSource]:
    """Parse one YAML document with the safe loader; reject aliases, deep nesting, huge
    integers, and huge or non-UTF-8 input."""
    if isinstance(text, bytes):
        if len(text) > limits().max_spec_bytes:
            raise _too_big(len(text), source_name)
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise SpecError(
                [FieldError("", f"not UTF-8 text (byte {exc.start})")], source_name
            ) from None
    size = len(text.encode("utf-8", errors="replace"))
    if size > limits().max_spec_bytes:
        raise _too_big(size, source_name)
    try:
        _refuse_aliases_and_deep_nesting(text)
        loader = _SpecLoader(text)
        try:
            node = loader.get_single_node()
            data = loader.construct_document(node) if node is not None else None
        finally:
            loader.dispose()
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        # "expected a single document in the stream" (the context), "but found another ..."
        parts = [getattr(exc, "context", None), getattr(exc, "problem", None)]
        problem = ", ".join(part for part in parts if part) or str(exc)
        raise SpecError([FieldError("", f"invalid YAML: {problem}", line)], source_name) from None
    if data is None:
        raise SpecError([FieldError("", "empty document")], source_name)
    source = YamlSource()
    _collect_lines(node, "", source.lines)
    return data, source


def _refuse_aliases_and_deep_nesting(text: str) -> None:
    """Aliases make billion-laughs documents: a few lines that expand to gigabytes."""
    depth = 0
    for event in yaml.parse(text, Loader=yaml.CSafeLoader):
        if isinstance(event, yaml.AliasEvent):
            _refuse("YAML aliases (*name) are not allowed in specs", event.start_mark)
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > MAX_NESTING:
                _refuse(f"specs may nest at most {MAX_NESTING} levels deep", event.start_mark)
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1


def _refuse(problem: str, mark: yaml.Mark) -> NoReturn:
    raise yaml.composer.ComposerError(None, None, problem, mark)


class _SpecLoader(yaml.CSafeLoader):
    """libyaml's parser with the safe constructor, refusing integers beyond 64 bits."""

    def construct_yaml_int(self, node: yaml.ScalarNode) -> int:
        try:
            value = super().construct_yaml_int(node)
        except ValueError:  # a decimal of over 4300 digits
            value = None
        if value is None or not -(2 ** (INTEGER_BITS - 1)) <= value < 2 ** (INTEGER_BITS - 1):
            raise yaml.constructor.ConstructorError(
                None, None, f"integers must fit in {INTEGER_BITS} bits", node.start_mark
            )
        return value


_SpecLoader.add_constructor("tag:yaml.org,2002:int", _SpecLoader.construct_yaml_int)


def _collect_lines(node: yaml.Node, prefix: str, lines: dict[str, int]) -> None:
    if not isinstance(node, yaml.MappingNode):
        return
    for key_node, value_node in node.value:
        if not isinstance(key_node, yaml.ScalarNode):
            continue
        path = f"{prefix}.{key_node.value}" if prefix else str(key_node.value)
        lines[path] = key_node.start_mark.line + 1
        _collect_lines(value_node, path, lines)


def _too_big(size: int, source_name: str) -> SpecError:
    limit = limits().max_spec_bytes
    message = f"spec is {size} bytes; the limit is {limit} (GENFLEET_MAX_SPEC_BYTES)"
    return SpecError([FieldError("", message)], source_name)
