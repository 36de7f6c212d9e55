"""What to segment: files, folders (recursive), glob patterns and manifests, expanded to one :class:`Item` per
image in a stable order.

A manifest is a ``.jsonl`` file (one object per line) or a ``.csv`` file (a header row), with a ``path`` column
(relative paths are taken from the manifest's folder) and an optional ``text`` column: the image's own prompts,
which replace the run's ``text`` for that image (JSONL: a string or a list of strings; CSV: prompts separated
by ``|``).
"""
from __future__ import annotations

import csv
import glob
import json
import os
from dataclasses import dataclass
from pathlib import Path

# Files a folder or glob contributes (anything else there is skipped; a file named explicitly is always tried).
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"}
MANIFEST_SUFFIXES = {".jsonl", ".csv"}
CSV_PROMPT_SEPARATOR = "|"


class UsageError(ValueError):
    """A bad argument of :func:`sam3lt.segment_dataset` (the CLI's exit status 2); the message names it."""


@dataclass(frozen=True)
class Item:
    """One image to segment: ``key`` identifies it across runs (the path as given or found), ``stem`` names its
    PNG outputs, ``prompts`` are its own (a manifest's) or None for the run's."""
    key: str
    stem: str
    prompts: tuple[str, ...] | None = None


def expand(inputs, text: list[str] | None) -> list[Item]:
    """Every image of ``inputs`` (a path / pattern or a list of them), first occurrence kept, with unique stems.
    Raises :class:`UsageError` for an input that matches nothing or an image left without prompts."""
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    found: dict[str, tuple[str, ...] | None] = {}
    for given in inputs:
        for key, prompts in _expand_one(str(given)):
            found.setdefault(key, prompts)
    if not found:
        raise UsageError("inputs: no images given")
    stems: set[str] = set()
    items = []
    for key, prompts in found.items():
        if prompts is None and not text:
            raise UsageError(f"text: {key} has no prompts; give text=[...] (--text) or a manifest 'text' column")
        items.append(Item(key, unique_stem(Path(key).stem, stems), prompts))
    return items


def _expand_one(given: str):
    path = Path(given)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise UsageError(f"inputs: folder {given} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
        return [(str(p), None) for p in files]
    if path.is_file():
        return _read_manifest(path) if path.suffix.lower() in MANIFEST_SUFFIXES else [(given, None)]
    if glob.has_magic(given):
        files = sorted(p for p in glob.glob(given, recursive=True)
                       if os.path.isfile(p) and Path(p).suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise UsageError(f"inputs: pattern {given} matches no image files")
        return [(p, None) for p in files]
    raise UsageError(f"inputs: {given} is not a file, a folder or a glob pattern that matches images")


def _read_manifest(path: Path) -> list[tuple[str, tuple[str, ...] | None]]:
    is_csv = path.suffix.lower() == ".csv"
    out = []
    for n, row in _manifest_rows(path, is_csv):
        where = f"manifest {path} {'row' if is_csv else 'line'} {n}"
        if not isinstance(row, dict) or not isinstance(row.get("path"), str) or not row["path"].strip():
            raise UsageError(f"inputs: {where}: expected a 'path' column with the image path")
        image = Path(row["path"].strip())
        image = image if image.is_absolute() else path.parent / image
        out.append((str(image), _row_prompts(row.get("text"), where, split=is_csv)))
    if not out:
        raise UsageError(f"inputs: manifest {path} lists no images")
    return out


def _manifest_rows(path: Path, is_csv: bool) -> list[tuple[int, object]]:
    """(row or line number, parsed row) for every row of the manifest."""
    try:
        with open(path, newline="" if is_csv else None, encoding="utf-8") as f:
            if is_csv:
                reader = csv.DictReader(f)
                if "path" not in (reader.fieldnames or []):
                    raise UsageError(f"inputs: manifest {path}: expected a header row with a 'path' column, "
                                     f"got {reader.fieldnames}")
                return list(enumerate(reader, start=2))
            rows = []
            for n, line in enumerate(f, start=1):
                if line.strip():
                    try:
                        rows.append((n, json.loads(line)))
                    except json.JSONDecodeError as err:
                        raise UsageError(f"inputs: manifest {path} line {n}: not valid JSON ({err.msg})") from None
            return rows
    except UnicodeDecodeError:
        raise UsageError(f"inputs: manifest {path} is not UTF-8 text") from None


def _row_prompts(value, where: str, split: bool) -> tuple[str, ...] | None:
    if value is None or value == "":
        return None
    if isinstance(value, str):
        prompts = value.split(CSV_PROMPT_SEPARATOR) if split else [value]
    elif isinstance(value, list) and all(isinstance(p, str) for p in value):
        prompts = value
    else:
        raise UsageError(f"inputs: {where}: 'text' must be a prompt or a list of prompts, got {value!r}")
    prompts = [p.strip() for p in prompts]
    if not prompts or any(not p for p in prompts):
        raise UsageError(f"inputs: {where}: empty prompt in 'text' {value!r}")
    return tuple(prompts)


def unique_stem(stem: str, used: set[str]) -> str:
    # Two inputs with the same file name (from different folders) must not overwrite each other's outputs.
    candidate, n = stem, 1
    while candidate in used:
        candidate, n = f"{stem}_{n}", n + 1
    used.add(candidate)
    return candidate
