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


def _run_bench(tmp_path, *args) -> dict:
    out = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=900, cwd=tmp_path,
                         env={**__import__("os").environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout)


def test_issue23_benchmarks_run_through_the_current_code(tmp_path):
    """The scripts behind object-bound's tables run on the code as it is (bench_methods broke
    silently once when the method registry changed the config type): one tiny world each."""
    bench = ROOT / "benchmarks"
    rep = _run_bench(tmp_path, str(bench / "bench_methods.py"), "--seed", "3", "--n-per-class", "1", "--scales", "1",
                     "--settings", "distractors", "--rows", "lazsl,best-region,object-bound", "--skip-imagenet",
                     "--work", str(tmp_path / "bm"))
    rows = rep["toy"]["toy-clip"]["settings"]["distractors"]["x1"]["methods"]
    assert set(rows) == {"lazsl", "best-region", "object-bound"}
    assert rows["object-bound"]["regions_per_image"] == rows["lazsl"]["regions_per_image"] == 61
    assert (rows["lazsl"]["preset"], rows["object-bound"]["preset"]) == ("toy-all", "toy-bound")
    assert all(0.0 <= r["top1"] <= r["top5"] <= 1.0 for r in rows.values())
    scales = _run_bench(tmp_path, str(bench / "bench_object_scales.py"), "--seed", "3", "--n-per-class", "1",
                        "--settings", "distractors", "--scales", "1", "--out", str(tmp_path / "s.json"))
    world = scales["top1"]["distractors"]["x1"]
    assert {"oracle: the labelled bird's box", "best-region", "object-bound", "lazsl"} <= set(world)
    assert sum(world["correct"]["object-bound"]) == round(12 * world["object-bound"])  # 12 images, one per class
    pooled = _run_bench(tmp_path, str(bench / "bench_object_scales.py"), "--pool", str(tmp_path / "s.json"))
    diff = pooled["paired"]["distractors"]["object-bound - best-region"]
    expected = 100 * (world["object-bound"] - world["best-region"])
    assert abs(diff["points"] - expected) < 0.06 and diff["ci95"][0] <= diff["points"] <= diff["ci95"][1]
    probe = _run_bench(tmp_path, str(bench / "bench_binding_probe.py"), "--weights", "toy-clip", "--seed", "3",
                       "--n-per-class", "1", "--scales", "1")
    cell = probe["encoders"]["toy-clip"]["by_scale"]["x1"]
    assert cell["images"] == 12 and 0.0 <= cell["scene_swap_accuracy"] <= 1.0
