"""What every benchmark shares: inputs checked before any work, and JSON written as it goes.

* :func:`require_file`: a missing input (the shared descriptor files live in ../shared, which
  a fresh clone does not have) ends the run at once with one line that says what to pass.
* :class:`PartialJson`: the report is rewritten to ``--json-out`` after every section, so an
  interrupted or failed run still leaves the figures measured so far (``"complete": false``).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path


def require_file(path: str | Path, option: str, what: str) -> Path:
    """``path`` if it is a file; else one line on stderr and exit status 2 (no traceback, no work done)."""
    p = Path(path)
    if not p.is_file():
        print(f"error: {p} not found ({what}); pass {option} FILE, or skip this part.", file=sys.stderr)
        raise SystemExit(2)
    return p


class PartialJson:
    """A report dict written to ``path`` (if given) after every :meth:`set`, marked incomplete until :meth:`finish`."""

    def __init__(self, path: str | Path | None, report: dict):
        self.path = Path(path) if path else None
        self.report = dict(report, complete=False)
        self._write()

    def set(self, key: str, value) -> None:
        self.report[key] = value
        self._write()

    def finish(self) -> dict:
        self.report["complete"] = True
        self._write()
        print(json.dumps(self.report, indent=1))
        return self.report

    def _write(self) -> None:
        if self.path is not None:
            tmp = self.path.with_name(self.path.name + ".tmp")
            tmp.write_text(json.dumps(self.report, indent=1))
            tmp.replace(self.path)  # never a half-written file
