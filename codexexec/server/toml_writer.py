"""TOML text for a parsed document, in the layout Rust's `toml::to_string` uses.

Key/value pairs of a table come first, then each sub-table under its own `[dotted.header]`
(a table holding only sub-tables gets no header), sections separated by a blank line.
Arrays of tables use `[[header]]`. Only what `tomllib` produces needs writing.
"""

from __future__ import annotations

import datetime
import math
import re
from typing import Any

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_ESCAPES = {
    "\b": "\\b",
    "\t": "\\t",
    "\n": "\\n",
    "\f": "\\f",
    "\r": "\\r",
    '"': '\\"',
    "\\": "\\\\",
}


def dumps(table: dict[str, Any]) -> str:
    sections = [_pairs(table)] if _pairs(table) else []
    _children(table, [], sections)
    return "\n".join(sections)


def _pairs(table: dict[str, Any]) -> str:
    return "".join(f"{_key(k)} = {_value(v)}\n" for k, v in table.items() if not _is_table_like(v))


def _children(table: dict[str, Any], path: list[str], sections: list[str]) -> None:
    for key, value in table.items():
        dotted = ".".join(_key(p) for p in [*path, key])
        if isinstance(value, dict):
            pairs = _pairs(value)
            if pairs or not value:
                sections.append(f"[{dotted}]\n{pairs}")
            _children(value, [*path, key], sections)
        elif _is_table_like(value):
            for item in value:
                sections.append(f"[[{dotted}]]\n{_pairs(item)}")
                _children(item, [*path, key], sections)


def _is_table_like(value: Any) -> bool:
    if isinstance(value, dict):
        return True
    return isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)


def _key(key: str) -> str:
    return key if _BARE_KEY.fullmatch(key) else _string(key)


def _string(text: str) -> str:
    out = []
    for char in text:
        if char in _ESCAPES:
            out.append(_ESCAPES[char])
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"\\u{ord(char):04X}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, datetime.datetime | datetime.date | datetime.time):
        text = value.isoformat()
        return text[:-6] + "Z" if text.endswith("+00:00") else text
    if isinstance(value, dict):
        inner = ", ".join(f"{_key(k)} = {_value(v)}" for k, v in value.items())
        return "{ " + inner + " }" if inner else "{}"
    if isinstance(value, list):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")
