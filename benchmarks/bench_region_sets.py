"""Region sets side by side: LaZSL accuracy and map quality per set, through the CLI.

    PYTHONPATH=$PWD python benchmarks/bench_region_sets.py --seed 3 --every 4

Per region set, on one toy world (parts setting, the demo's held-out classes; ``--seed`` 3 by
default, a world nobody tuned on: the map design was chosen on seed 2 and the demo is seed 1):
a fresh store, ``build-attributes``, ``index-images`` with that set, ``classify --method lazsl``
(``toy-demo`` settings), ``faithfulness --compare --maps plan-dense`` (every ``--every``-th
image; pointing with the parts' boxes grown by 8 px), then ``evaluate --format json``, which
puts the run's region set, accuracy and map quality on one row. On patch regions the default
map is the transport plan over the patch cells (the probe of issue 12), on crops the plan mass
placed inside each crop by SCLIP-style tokens.

Prints one JSON object: the command lines, and per set acc1, pointing (chance), deletion and
insertion (random maps' values) and how many of the three beat random maps (95% intervals).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REGION_SETS = {
    "crops 30 (toy-demo default)": ["--preset", "toy-demo"],
    "patches plain": ["--regions", "patches", "--dense", "plain"],
    "patches maskclip": ["--regions", "patches", "--dense", "maskclip"],
    "patches clearclip": ["--regions", "patches", "--dense", "clearclip"],
    "patches sclip": ["--regions", "patches", "--dense", "sclip"],
    "patches sclip blocks -1 -2": ["--regions", "patches", "--dense", "sclip", "--layers", "-1,-2"],
    "patches plain block -2 (MSCI)": ["--regions", "patches", "--dense", "plain", "--layers", "-2"],
}


def pipeline(*args, env) -> str:
    """``pipeline ARGS -q`` in a fresh process (this checkout's code); its standard output."""
    cmd = [sys.executable, "-c", "from pipeline.cli import cli; cli()", *map(str, args), "-q"]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    if res.returncode != 0:
        raise SystemExit(f"pipeline {' '.join(map(str, args))} failed:\n{res.stdout[-2000:]}\n{res.stderr[-2000:]}")
    return res.stdout


def measure(name: str, index_args: list[str], world: Path, tmp: Path, every: int, env) -> dict:
    store = tmp / name.replace(" ", "_").replace("[", "").replace("]", "").replace(",", "_").replace("(", "").replace(")", "")
    s = ["--store", store]
    t0 = time.perf_counter()
    pipeline("build-attributes", "--from-json", world / "attributes.json", "--pretrained", "toy-clip", *s, env=env)
    pipeline("index-images", world / "images", *index_args, *s, env=env)
    pipeline("classify", "--method", "lazsl", "--preset", "toy-demo", "--limit", "0", *s, env=env)
    t1 = time.perf_counter()
    pipeline("faithfulness", "--compare", "--maps", "plan-dense", "--boxes", world / "boxes.jsonl", "--tolerance", "8",
             "--every", every, "--plot", tmp / f"{store.name}.png", *s, env=env)
    t2 = time.perf_counter()
    [row] = json.loads(pipeline("evaluate", "--format", "json", *s, env=env))
    keep = ("regions", "acc1", "maps_pointing", "maps_pointing_chance", "maps_deletion", "maps_deletion_random",
            "maps_insertion", "maps_insertion_random", "maps_better")
    return {"set": name, **{k: row[k] for k in keep}, "index_and_classify_s": round(t1 - t0, 1),
            "compare_s": round(t2 - t1, 1), "index_args": " ".join(index_args)}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=3, help="toy world seed (the demo is 1, the map design was tuned on 2)")
    ap.add_argument("--n-per-class", type=int, default=20)
    ap.add_argument("--every", type=int, default=4, help="faithfulness --compare on every N-th image")
    ap.add_argument("--sets", default=",".join(REGION_SETS), help="comma-separated names of REGION_SETS")
    a = ap.parse_args(argv)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TQDM_DISABLE": "1"}
    names = [n.strip() for n in a.sets.split(",") if n.strip()]
    unknown = [n for n in names if n not in REGION_SETS]
    if unknown:
        raise SystemExit(f"unknown set(s) {unknown}; known: {list(REGION_SETS)}")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        world = tmp / "world"
        pipeline("make-toyworld", "-o", world, "--setting", "parts", "--seed", a.seed, "--n-per-class", a.n_per_class,
                 env=env)
        rows = [measure(n, REGION_SETS[n], world, tmp, a.every, env) for n in names]
    print(json.dumps({"seed": a.seed, "n_per_class": a.n_per_class, "every": a.every, "method": "lazsl (toy-demo)",
                      "map_kind": "plan-dense", "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
