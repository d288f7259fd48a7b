"""Class lists for ``build-attributes CLASSES``: text, CSV/TSV or JSON, cleaned as DCLIP does."""
from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass, field
from pathlib import Path

from ...errors import InputError
from ...inputs import DEFAULT_MAX_FILE_BYTES, read_text_bounded
from ...names import clean_class_name
from ..attributes import read_attribute_json

CSV_NAME_COLUMNS = ("name", "classname", "class_name", "class")


# ---- class lists ------------------------------------------------------------------------
@dataclass
class ClassListReport:
    path: str = ""
    format: str = "txt"  # txt | csv | json
    classes: int = 0
    duplicates: list[str] = field(default_factory=list)  # merged names, as written
    duplicate_notes: list[str] = field(default_factory=list)  # "'Cat' (line 5) = 'cat' (line 1)"
    empty: list[str] = field(default_factory=list)  # JSON input: classes with an empty list
    underscores: int = 0  # names where '_' became a space

    def lines(self) -> list[str]:
        out = [f"{self.path}: {self.classes} classes ({self.format})"]
        if self.duplicates:
            notes = "; ".join(self.duplicate_notes[:5]) or ", ".join(self.duplicates[:5])
            out.append(f"{len(self.duplicates)} duplicate class names merged: {notes}" + (" ..." if len(self.duplicates) > 5 else ""))
        if self.empty:
            out.append(f"{len(self.empty)} classes with an empty list in the file: {', '.join(self.empty[:10])}")
        if self.underscores:
            out.append(f"{self.underscores} names had '_' turned into spaces (as DCLIP does)")
        return out


def read_class_list(path: str | os.PathLike, *, duplicates: str = "merge",
                    max_bytes: int = DEFAULT_MAX_FILE_BYTES) -> tuple[list[str], ClassListReport]:
    """Class names from a text file (one per line), a CSV with a ``name`` column, or a
    DCLIP/CuPL JSON (its keys). Names are cleaned as DCLIP does (``_`` -> space, whitespace
    collapsed); an empty name is refused; names equal after case/whitespace normalisation are
    merged and reported (``duplicates="merge"``) or refused (``duplicates="error"``).
    The order is the file's order (it is the label order for most datasets). The file is at
    most ``max_bytes`` (checked before reading); a name with a control character is refused,
    naming its line."""
    if duplicates not in ("merge", "error"):
        raise InputError(f"duplicates must be 'merge' or 'error', not {duplicates!r}.")
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file; give a class list (.txt one name per line, .csv with a name column, or .json).")
    suffix = path.suffix.lower()
    report = ClassListReport(path=str(path))

    if suffix == ".json":
        mapping, jrep = read_attribute_json(path, max_bytes)  # does its own cleaning, merging and reporting
        report.format, report.duplicates, report.empty = "json", list(jrep.duplicates), list(jrep.empty)
        if duplicates == "error" and jrep.duplicates:
            raise InputError(f"{path}: duplicate class names after normalisation: {', '.join(jrep.duplicates[:10])}.")
        names = list(mapping)
        report.classes = len(names)
        if not names:
            raise InputError(f"{path}: no class names in the file.")
        return names, report

    text = read_text_bounded(path, max_bytes)
    entries: list[tuple[str, str]] = []  # (where, name as written)
    if suffix in (".csv", ".tsv"):
        report.format = "csv"
        reader = csv.DictReader(io.StringIO(text), delimiter="\t" if suffix == ".tsv" else ",")
        try:
            cols = {c.strip().lower(): c for c in (reader.fieldnames or []) if c}
            col = next((cols[c] for c in CSV_NAME_COLUMNS if c in cols), None)
            if col is None:
                raise InputError(
                    f"{path}: no 'name' column (columns: {', '.join(reader.fieldnames or []) or 'none'}); "
                    "the first row must be a header with a 'name' column."
                )
            for row in reader:
                entries.append((f"line {reader.line_num}", row.get(col) or ""))
        except csv.Error as exc:  # a field over csv's size limit, a broken quote
            raise InputError(f"{path}: line {reader.line_num}: not readable as CSV ({exc}).") from None
    else:
        lines = text.splitlines()
        while lines and not lines[-1].strip():  # a trailing newline is not an empty name
            lines.pop()
        entries = [(f"line {i}", line) for i, line in enumerate(lines, 1)]

    names: list[str] = []
    first: dict[str, tuple[str, str]] = {}
    for where, written in entries:
        name = clean_class_name(written, where=f"{path}: {where}")
        if not name:
            raise InputError(
                f"{path}: {where}: empty class name (the class order is the label order, so it is not skipped); "
                "name the class or delete the line."
            )
        if "_" in written:
            report.underscores += 1
        norm = name.lower()
        if norm in first:
            note = f"{written.strip()!r} ({where}) = {first[norm][1]!r} ({first[norm][0]})"
            if duplicates == "error":
                raise InputError(f"{path}: duplicate class name: {note}.")
            report.duplicates.append(name)
            report.duplicate_notes.append(note)
            continue
        first[norm] = (where, written.strip())
        names.append(name)
    if not names:
        raise InputError(f"{path}: no class names in the file.")
    report.classes = len(names)
    return names, report
