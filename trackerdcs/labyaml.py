"""Reading the lab YAML: the text as YAML defines it, and nothing that would be read silently wrong.

`read_yaml(path)` returns the file's data or raises `YamlFileError` with the file, the line and
the reason, never a traceback:

- the file must be UTF-8 (YAML's own encoding; a Latin-1 `°` in a comment is an error naming the
  line, not a `UnicodeDecodeError`);
- a key given twice in one mapping is an error naming the key and both lines (PyYAML keeps the
  last one silently: a second `julabo:` section at the end of the file would replace the first);
  keys brought in by a merge (`<<: *defaults`) may be overridden, as YAML merges intend;
- nesting deeper than `MAX_DEPTH` levels is an error (PyYAML would recurse until Python's
  recursion limit);
- a value that cannot be constructed (an integer of more than Python's 4300 digits, a date
  that does not exist) is an error at its line.

The events come from libyaml's parser where PyYAML has it (its wheels do; `LabCLoader`), the
nodes are composed and constructed in Python with the checks above: a tracker-sized lab file
(10,000 channels, bench `tracker_config_load_s`) reads about three times faster than with
PyYAML's own parser, which remains the fallback (`LabLoader`).

Which floats a section accepts (finite, in range) is the configuration models' business
(`trackerdcs.config`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from yaml.composer import Composer, ComposerError
from yaml.constructor import ConstructorError, SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode
from yaml.parser import Parser
from yaml.reader import Reader
from yaml.resolver import Resolver
from yaml.scanner import Scanner

from trackerdcs.guard import shorten

MAX_DEPTH = 64  # nesting levels of a lab file (the example nests 6)
_MERGE = "tag:yaml.org,2002:merge"
_INT = "tag:yaml.org,2002:int"


class YamlFileError(Exception):
    """A file that is not acceptable YAML: its message names the file, the line and why."""


class _LabComposer(Composer):
    """PyYAML's composer, refusing nesting deeper than `MAX_DEPTH`."""

    _depth = 0

    def compose_node(self, parent: Node | None, index: Any) -> Node | None:
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                mark = self.peek_event().start_mark
                raise ComposerError(None, None, f"nested deeper than {MAX_DEPTH} levels", mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


class _LabConstructor(SafeConstructor):
    """PyYAML's safe constructor, refusing duplicate keys and unconstructable values."""

    def construct_object(self, node: Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except (ValueError, OverflowError) as exc:  # int("5001 digits"), a 31st of February
            if node.tag == _INT:
                why = f"an integer of {len(str(node.value))} characters is out of range"
            else:
                why = f"cannot read this value: {shorten(str(exc), 120)}"
            raise ConstructorError(None, None, why, node.start_mark) from None

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, MappingNode):
            seen: dict[Any, Node] = {}
            for key_node, _ in node.value:
                if key_node.tag == _MERGE or not isinstance(key_node, ScalarNode):
                    continue
                key = self.construct_object(key_node)
                if key in seen:
                    first = seen[key].start_mark.line + 1
                    raise ConstructorError(
                        None, None,
                        f"key {shorten(str(key), 60)!r} given twice in one mapping (first at "
                        f"line {first}): the second would silently replace the first",
                        key_node.start_mark,
                    )  # fmt: skip
                seen[key] = key_node
        return super().construct_mapping(node, deep)


class LabLoader(Reader, Scanner, Parser, _LabComposer, _LabConstructor, Resolver):
    """PyYAML's safe loader, refusing duplicate keys, deep nesting and unconstructable values."""

    def __init__(self, stream: str) -> None:
        Reader.__init__(self, stream)
        Scanner.__init__(self)
        Parser.__init__(self)
        _LabComposer.__init__(self)
        _LabConstructor.__init__(self)
        Resolver.__init__(self)


if yaml.__with_libyaml__:  # PyYAML built with libyaml (its wheels are)
    from yaml.cyaml import CParser

    class LabCLoader(_LabComposer, _LabConstructor, CParser, Resolver):
        """`LabLoader` reading its events from libyaml's parser: a tracker-sized lab (10,000
        channels) in a fraction of the time. The nodes are composed in Python, so that the
        depth is checked (libyaml's composer recurses in C without a limit: a deep enough file
        crashes the process)."""

        def __init__(self, stream: str) -> None:
            CParser.__init__(self, stream)
            _LabComposer.__init__(self)
            _LabConstructor.__init__(self)
            Resolver.__init__(self)

    _LOADER: type = LabCLoader
else:  # pragma: no cover - a PyYAML without libyaml
    _LOADER = LabLoader


def parse_yaml(text: str, path: Path | str = "<config>") -> Any:
    """The data of YAML `text` (see the module doc); `YamlFileError` otherwise."""
    try:
        return yaml.load(text, Loader=_LOADER)  # safe construction: no arbitrary objects
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise YamlFileError(f"{path}: not valid YAML{where}: {shorten(problem, 300)}") from None
    except RecursionError:  # defensive: MAX_DEPTH keeps the composer well within the limit
        raise YamlFileError(f"{path}: not valid YAML: nested too deeply") from None


def read_yaml(path: Path | str) -> Any:
    """Read and parse a YAML file (UTF-8); `YamlFileError` naming the file otherwise."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise YamlFileError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise YamlFileError(
            f"{path}: not UTF-8 at line {line} (byte {raw[exc.start]:#04x}, e.g. a Latin-1 "
            "character): save the file as UTF-8"
        ) from None
    return parse_yaml(text, path)
