"""``export-attributes``: the stored attributes as files other tools read."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stores import files, tables
from stores.catalog import Catalog

from ..errors import InputError

EXPORT_FORMATS = ("clip-benchmark", "dclip")


@dataclass
class ExportReport:
    path: str
    format: str
    style: str
    classes: int
    prompts: int

    def lines(self) -> list[str]:
        return [f"{self.path}: {self.classes} classes, {self.prompts} {'prompts' if self.format == 'clip-benchmark' else 'texts'} ({self.format}, {self.style})"]


def export_attributes(
    cat: Catalog, fmt: str, out: str | os.PathLike, dataset: str = "custom", *, style: str | None = None
) -> ExportReport:
    """Write the stored attributes as a file other tools read.

    ``clip-benchmark``: ``{dataset: {class: [prompt, ...]}}``, the class-specific template
    file of CLIP_benchmark's ``--custom_template_file`` (prompts are the exact encoded
    strings; ``dataset`` must be the name CLIP_benchmark uses, e.g. ``cifar10``).
    ``dclip``: ``{class: [text, ...]}`` (descriptors, or CuPL sentences with
    ``style="sentences"``), which ``--from-json`` reads back unchanged.
    """
    if fmt not in EXPORT_FORMATS:
        raise InputError(f"Unknown export format {fmt!r}; use one of {', '.join(EXPORT_FORMATS)}.")
    styles = tables.attribute_styles(cat)
    if style is None:
        if len(styles) > 1:
            raise InputError(f"The store holds attributes of several styles ({', '.join(styles)}); pick one with --style.")
        style = styles[0] if styles else "descriptors"
    by_class = tables.attributes_by_class(cat, style)
    if not by_class:
        raise InputError(f"No {style} attributes in {cat.root}; build or import some first.")
    per_class = {name: [prompt if fmt == "clip-benchmark" else text for text, prompt in rows
                        if fmt == "clip-benchmark" or text] for name, rows in by_class.items()}
    doc: Any = {dataset: per_class} if fmt == "clip-benchmark" else per_class
    out = Path(out)
    if not out.parent.is_dir():
        raise InputError(f"-o {out}: the folder {out.parent} does not exist; create it first or write elsewhere.")
    if out.is_dir():
        raise InputError(f"-o {out} is a folder; give a file name (e.g. {out / 'attributes.json'}).")
    files.write_text(out, json.dumps(doc, indent=2, ensure_ascii=False) + "\n")
    return ExportReport(str(out), fmt, style, len(per_class), sum(len(v) for v in per_class.values()))
