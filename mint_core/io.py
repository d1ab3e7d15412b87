"""Atomic artifact writing, JSON(-lines) readers, and safe file names.

Every artifact is written to a temporary file in the same directory and renamed into place, so a
killed run never leaves a half-written file that a resumed run would trust. The readers raise
:class:`~mint_core.registry.MintError` naming the file and line, never a bare ``ValueError``: an
artifact a person edited or a disk corrupted ends a command with a message, not a traceback.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, TypeVar

import yaml

from mint_core.registry import MintError

T = TypeVar("T")


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` in one rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; on success it replaces the folder ``path``.

    A reader sees the old folder or the complete new one, never a half-written one: the old folder
    is renamed aside, the new one renamed in, then the old one deleted. Folders a killed save left
    (its temporary folder, or the old one set aside between the two renames) are deleted first:
    this save supersedes them, and a model folder can weigh gigabytes.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in [*path.parent.glob(f".{path.name}.*.tmp"), *path.parent.glob(f".{path.name}.old-*")]:
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        old = None
        if path.exists():
            old = path.parent / f".{path.name}.old-{os.getpid()}"
            if old.exists():
                shutil.rmtree(old)
            os.replace(path, old)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | Path, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def _decode(text: str, where: str, *, one_line: bool = False) -> Any:
    """``json.loads`` whose failures name ``where`` (a file, or ``file:line`` when ``one_line``)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        position = f"column {exc.colno}" if one_line else f"line {exc.lineno}, column {exc.colno}"
        raise MintError(f"{where}: not valid JSON ({exc.msg}: {position})") from None
    except RecursionError:
        raise MintError(f"{where}: JSON nested too deeply to read") from None


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise MintError(f"{path}: not UTF-8 text (byte {exc.start})") from None


def read_json(path: str | Path, *, expect: type | None = None, hint: str = "") -> Any:
    """The JSON value in ``path``; ``expect`` (``dict``, ``list``) checks the top-level type.

    Raises :class:`MintError` naming the file (and line) when it is not valid JSON or not of the
    expected type; ``hint`` is appended to say what to do (e.g. "delete it to re-run the stage").
    """
    path = Path(path)
    suffix = f" {hint}" if hint else ""
    data = _decode(_read_text(path), str(path))
    if expect is not None and not isinstance(data, expect):
        raise MintError(f"{path}: expected a JSON {_json_kind(expect)}, found a {_json_kind(type(data))}.{suffix}")
    return data


def _json_kind(kind: type) -> str:
    return {dict: "object", list: "array", str: "string", int: "number", float: "number", bool: "boolean",
            type(None): "null"}.get(kind, kind.__name__)


def write_yaml(path: str | Path, data: Any) -> None:
    write_text(path, yaml.safe_dump(data, sort_keys=False))


def write_jsonl(path: str | Path, rows: Iterable[dict[str, Any]]) -> int:
    count = 0
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, default=str) + "\n")
            count += 1
    return count


def read_jsonl(path: str | Path, *, parse: Callable[[dict[str, Any]], T] | None = None) -> list[Any]:
    """One JSON object per non-blank line, each passed through ``parse`` when given (e.g.
    ``Case.from_dict``). A bad line, or a record ``parse`` rejects (a missing or mistyped field),
    raises :class:`MintError` naming ``file:line``."""
    path = Path(path)
    rows = []
    for number, line in enumerate(_read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        row = _decode(line, where, one_line=True)
        if not isinstance(row, dict):
            raise MintError(f"{where}: expected a JSON object, found a {_json_kind(type(row))}")
        if parse is not None:
            try:
                row = parse(row)
            except KeyError as exc:
                raise MintError(f"{where}: record without the field {exc.args[0]!r}") from None
            except (TypeError, ValueError, AttributeError) as exc:
                raise MintError(f"{where}: invalid record ({exc})") from None
        rows.append(row)
    return rows


def update_json(path: str | Path, key: str, value: Any) -> dict[str, Any]:
    """Set ``data[key] = value`` in a JSON object file (created if missing), atomically."""
    path = Path(path)
    data = read_json(path, expect=dict) if path.exists() else {}
    data[key] = value
    write_json(path, data)
    return data


#: Longest file name :func:`safe_file_name` returns (before any suffix the caller adds): far below
#: the 255 bytes most file systems allow, so ``.png`` or ``.tmp`` suffixes always fit.
MAX_NAME_LENGTH = 120


def safe_file_name(text: str, *, default: str = "item", max_length: int = MAX_NAME_LENGTH) -> str:
    """A portable file name for an id: runs of other characters become ``_``; long ids are cut and
    get a hash of the whole id, so two long ids sharing a prefix still get distinct names."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("._") or default
    if len(name) > max_length:
        digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:12]
        name = f"{name[:max_length - 13].rstrip('._')}_{digest}"
    return name
