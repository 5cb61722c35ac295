"""TOML documents that remember where things are, so errors can name file:line.

``tomllib`` gives values without positions; :class:`TomlSource` keeps the text
and finds the line of a table (``[cluster]``, the k-th ``[[nodes]]``) or of a
key inside one. Spec and scenario loaders use it to build
:class:`~vmcluster.errors.SpecError` messages.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from vmcluster.errors import SpecError

__all__ = ["TableReader", "TableRef", "TomlSource", "load_toml"]

T = TypeVar("T")

_HEADER = re.compile(r"^\s*(\[\[?)\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
_KEY = re.compile(r"""^\s*("([^"]+)"|'([^']+)'|([A-Za-z0-9_-]+))\s*=""")


@dataclass(frozen=True)
class TableRef:
    """A table of the document: ``name`` and, for an array of tables, its index."""

    name: str
    index: int | None = None

    def label(self) -> str:
        return f"[{self.name}]" if self.index is None else f"[[{self.name}]] #{self.index + 1}"


class TomlSource:
    """A parsed TOML file plus the line numbers of its tables and keys."""

    def __init__(self, text: str, filename: str) -> None:
        self.filename = filename
        self.lines = text.splitlines()
        try:
            self.data: dict[str, Any] = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            match = re.search(r"line (\d+)", str(exc))
            where = f"{filename}:{match.group(1)}" if match else filename
            raise SpecError(where, f"invalid TOML: {exc}", "fix the syntax") from exc
        self._tables: dict[tuple[str, int | None], tuple[int, int]] = {}
        self._labels: dict[tuple[str, int | None], str] = {}
        self._index_tables()

    def replace_tables(self, name: str, tables: list[dict[str, Any]], labels: list[str]) -> None:
        """Put ``tables`` in place of the document's ``[[name]]`` array (tables that come
        from elsewhere, e.g. VM definitions kept in the store); their errors name them by
        ``labels`` (one per table) rather than by a line of this text."""
        for key in [k for k in self._tables if k[0] == name]:
            del self._tables[key]
        self.data[name] = tables
        self._labels.update({(name, i): label for i, label in enumerate(labels)})

    def _index_tables(self) -> None:
        counts: dict[str, int] = {}
        starts: list[tuple[tuple[str, int | None], int]] = []
        for lineno, line in enumerate(self.lines, start=1):
            match = _HEADER.match(line)
            if not match:
                continue
            name = match.group(2).strip().strip('"')
            if match.group(1) == "[[":
                idx = counts.get(name, 0)
                counts[name] = idx + 1
                starts.append(((name, idx), lineno))
            else:
                starts.append(((name, None), lineno))
        for i, (key, start) in enumerate(starts):
            end = starts[i + 1][1] - 1 if i + 1 < len(starts) else len(self.lines)
            self._tables[key] = (start, end)

    def where(self, table: TableRef | None = None, key: str | None = None) -> str:
        """``file:line`` of ``key`` in ``table`` (or of the table, or just the file)."""
        if table is None:
            return self.filename
        span = self._tables.get((table.name, table.index))
        if span is None:
            return self.filename
        start, end = span
        if key is not None:
            for lineno in range(start + 1, end + 1):
                match = _KEY.match(self.lines[lineno - 1])
                if match and key in (match.group(2), match.group(3), match.group(4)):
                    return f"{self.filename}:{lineno}"
        return f"{self.filename}:{start}"

    def error(
        self, table: TableRef | None, key: str | None, what: str, hint: str = ""
    ) -> SpecError:
        """A SpecError located at ``key`` of ``table``; prefixed with the table's label."""
        if table is None:
            return SpecError(self.where(), what, hint, field=key)
        label = self._labels.get((table.name, table.index)) or table.label()
        return SpecError(self.where(table, key), f"{label} {what}", hint, field=key)

    def check_keys(
        self, table: TableRef, data: Mapping[str, Any], allowed: set[str], required: set[str]
    ) -> None:
        """Reject unknown keys (naming the allowed ones) and missing required keys."""
        for key in data:
            if key not in allowed:
                raise self.error(
                    table, key, f"unknown key {key!r}", f"allowed: {', '.join(sorted(allowed))}"
                )
        for key in sorted(required):
            if key not in data:
                raise self.error(table, None, f"missing required key {key!r}", "add it")


class TableReader:
    """Typed access to one table's values, raising located SpecErrors."""

    def __init__(self, src: TomlSource, table: TableRef, data: Mapping[str, Any]) -> None:
        self.src, self.table, self.data = src, table, data

    def fail(self, key: str | None, what: str, hint: str = "") -> Exception:
        return self.src.error(self.table, key, what, hint)

    def get(self, key: str, kind: type[T] | tuple[type, ...], default: T | None = None) -> Any:
        if key not in self.data:
            return default
        value = self.data[key]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        # bool is an int in Python; a spec saying `cores = true` is a mistake.
        if isinstance(value, bool) and bool not in kinds:
            value = object()
        if not isinstance(value, kinds):
            names = " or ".join(k.__name__ for k in kinds)
            raise self.fail(key, f"{key} must be {names}, got {self.data[key]!r}")
        return value

    def positive(self, key: str, kind: type, default: Any = None) -> Any:
        value = self.get(key, (kind, int) if kind is float else kind, default)
        if value is not None and value <= 0:
            raise self.fail(key, f"{key} must be > 0, got {value}")
        return float(value) if kind is float and value is not None else value

    def name(self) -> str:
        value = self.get("name", str)
        if not value or not value.strip():
            raise self.fail("name", "name must be a non-empty string")
        return str(value)

    def names(self, key: str) -> tuple[str, ...] | None:
        value = self.get(key, list)
        if value is None:
            return None
        if not all(isinstance(v, str) for v in value):
            raise self.fail(key, f"{key} must be a list of names (strings)")
        if len(set(value)) != len(value):
            raise self.fail(key, f"{key} names something twice")
        return tuple(value)


def load_toml(path: Path | str) -> TomlSource:
    """Read and parse a TOML file, with a clear error when it cannot be read."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise SpecError(str(path), "no such file", "check the path") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(str(path), f"cannot read: {exc}") from exc
    return TomlSource(text, str(path))
