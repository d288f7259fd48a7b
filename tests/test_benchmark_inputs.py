"""Benchmarks without ../shared fail at once in one line; their JSON is written as they go."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_missing_shared_descriptors_fail_in_one_line_before_any_work(tmp_path):
    for script in ("bench_methods.py", "bench_query.py"):
        out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), "--descriptors", str(tmp_path / "no.json")],
                             capture_output=True, text=True, timeout=300, cwd=tmp_path)
        assert out.returncode == 2, (script, out.stderr[-500:])
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1 and "no.json not found" in lines[0] and "--descriptors" in lines[0], (script, out.stderr)
        assert out.stdout == "" and not (tmp_path / "bench-methods-work").exists()


def test_partial_json_is_complete_only_at_the_end(tmp_path):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from _report import PartialJson

    path = tmp_path / "r.json"
    rep = PartialJson(path, {"command": "x"})
    assert json.loads(path.read_text()) == {"command": "x", "complete": False}
    rep.set("part1", {"acc": 0.5})
    assert json.loads(path.read_text()) == {"command": "x", "complete": False, "part1": {"acc": 0.5}}
    rep.finish()
    assert json.loads(path.read_text())["complete"] is True and not (tmp_path / "r.json.tmp").exists()
