"""The workbook's YAML reader: strict where PyYAML is lenient, one clear line where it fails.

Parameter, grid and sources files decide what a run computes, so three PyYAML habits would
turn a typo into a silently different run or an unreadable error:

- two equal keys in one mapping (two ``dinov2:`` labels) keep the last one without a word:
  here they are an error naming the key and both lines;
- YAML 1.1 reads ``1e-4`` as a string (its floats need a dot), so ``-p weight_decay 1e-4``
  would be refused as text: here it is the number the user meant, as in YAML 1.2;
- a syntax error or a file that is not UTF-8 raises a many-line parser traceback: here it is
  one :class:`YamlError` line, ``<file or -p key>, line L, column C: <problem>``.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from yaml.constructor import ConstructorError

# YAML 1.2's exponent floats without a dot (1e-4, 2E+3); 1.1's own float forms stay as they are.
_EXPONENT_FLOAT = re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$")


class YamlError(ValueError):
    """A YAML text could not be read; the message is one line naming where and what."""


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys and reads exponent floats as numbers."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        first_line: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                line = first_line.setdefault(key, key_node.start_mark.line)
            except TypeError:  # an unhashable key: the base class reports it
                continue
            if line != key_node.start_mark.line:
                raise ConstructorError(None, None, f"duplicate key {key!r} (first on line "
                                       f"{line + 1})", key_node.start_mark)
        return super().construct_mapping(node, deep=deep)


_StrictLoader.add_implicit_resolver("tag:yaml.org,2002:float", _EXPONENT_FLOAT,
                                    list("-+0123456789"))


def _one_line(err: yaml.YAMLError, source: str) -> str:
    mark = getattr(err, "problem_mark", None)
    where = f"{source}, line {mark.line + 1}, column {mark.column + 1}" if mark else source
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    context = getattr(err, "context", None)
    return f"{where}: {problem}" + (f" ({context})" if context else "")


def parse_yaml(text: str, source: str) -> Any:
    """The value of a YAML text; ``source`` (a file name, ``-p key``) names it in errors."""
    try:
        return yaml.load(text, Loader=_StrictLoader)  # a SafeLoader: no arbitrary objects
    except yaml.YAMLError as err:
        raise YamlError(_one_line(err, source)) from None


def read_yaml(path: str | Path) -> Any:
    """The value of a YAML file, refusing bytes that are not UTF-8 with the file named."""
    path = Path(path)
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise YamlError(f"{path}, line {line}: not UTF-8 text (byte 0x{raw[err.start]:02x} "
                        f"at offset {err.start})") from None
    return parse_yaml(text, str(path))
