"""Safe, bounded YAML parsing that remembers which line each field came from."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml

from jobs.limits import LIMITS
from jobs.spec_errors import FieldError, SpecError


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
    """Parse one YAML document with the safe loader; reject aliases, huge and non-UTF-8 input."""
    if isinstance(text, bytes):
        if len(text) > LIMITS.max_spec_bytes:
            raise _too_big(len(text), source_name)
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise SpecError(
                [FieldError("", f"not UTF-8 text (byte {exc.start})")], source_name
            ) from None
    if len(text.encode("utf-8", errors="replace")) > LIMITS.max_spec_bytes:
        raise _too_big(len(text), source_name)
    try:
        loader = _NoAliasSafeLoader(text)
        try:
            node = loader.get_single_node()
            data = loader.construct_document(node) if node is not None else None
        finally:
            loader.dispose()
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = getattr(exc, "problem", None) or str(exc)
        raise SpecError([FieldError("", f"invalid YAML: {problem}", line)], source_name) from None
    if data is None:
        raise SpecError([FieldError("", "empty document")], source_name)
    source = YamlSource()
    _collect_lines(node, "", source.lines)
    return data, source


class _NoAliasSafeLoader(yaml.SafeLoader):
    """SafeLoader that refuses anchors/aliases: they enable billion-laughs documents."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(
                None, None, "YAML aliases (*name) are not allowed in specs", event.start_mark
            )
        return super().compose_node(parent, index)


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
    limit = LIMITS.max_spec_bytes
    message = f"spec is {size} bytes; the limit is {limit} (GENFLEET_MAX_SPEC_BYTES)"
    return SpecError([FieldError("", message)], source_name)
