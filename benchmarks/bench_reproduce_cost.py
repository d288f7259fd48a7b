"""What a docs/reproduce.md run costs, stage by stage, at the real model size; prints one JSON object.

    python benchmarks/bench_reproduce_cost.py                   # CUB miniature, 2 images, 2 threads
    python benchmarks/bench_reproduce_cost.py --images 8 --threads 2

Runs two of the documented command lines, as a user would (each stage a fresh ``pipeline`` process), on a
CUB-200-2011 miniature in its published layout, with ViT-B-32 of the real size and random weights (no
download): ``lazsl-cub-b32`` (81 regions per image) and ``wca-cub-b32`` (101 regions per image, then
clip, clip-e, dclip, waffle, cupl and wca classified one method at a time). Texts are a descriptor and a
sentence file for the miniature's classes only, so text figures are per text.

Per stage: wall seconds (process start, imports and model load included), the seconds the stage itself
reports, and peak RSS of its process (``os.wait4``); rates: texts/s (build-attributes), regions/s and
images/s (index-images), images/s (classify). ``startup_s`` is the control: the same process start and model
load doing nothing else (``pipeline build-attributes`` of one class with one descriptor), so a stage's
own cost is its wall time minus it. The estimate for the full CUB test split (5,794 images) scales the
measured rates; it assumes the rate stays what it was on these few images.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

CUB_TEST_IMAGES = 5794
MODEL = ["--model", "ViT-B-32", "--pretrained", "random:0"]


def run_stage(argv: list[str], env: dict) -> dict:
    """One ``pipeline`` command in a fresh process: wall seconds, peak RSS (MiB), its output."""
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", "import sys; from pipeline.cli import cli; sys.exit(cli())", *argv],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, cwd=REPO, text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"pipeline {' '.join(argv)} failed:\n{out}")
    return {"wall_s": round(wall, 2), "peak_rss_mib": round(usage.ru_maxrss / 1024, 1), "output": out}


def per_s(n: int, seconds: float | None) -> float | None:
    """A rate, or None where the time left after the start-up control is not measurable (<= 0)."""
    return round(n / seconds, 2) if seconds else None


def seconds_reported(out: str, pattern: str) -> float | None:
    m = re.search(pattern, out)
    return float(m.group(1)) if m else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=2, help="CUB test images in the miniature (one per class)")
    ap.add_argument("--threads", type=int, default=2, help="torch/OpenMP threads (the machine has 2 cores)")
    args = ap.parse_args()

    from pipeline.datasets import class_names, get_dataset
    from tests.helpers.dataset_miniatures import build_cub

    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": str(args.threads),
           "MKL_NUM_THREADS": str(args.threads), "CUDA_VISIBLE_DEVICES": "", "HF_HUB_OFFLINE": "1"}
    classes = [round(i * 199 / max(args.images - 1, 1)) for i in range(args.images)]
    names = class_names(get_dataset("cub"))
    stages: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        root, _ = build_cub(tmp / "data", classes)
        desc, sentences, one = tmp / "desc.json", tmp / "cupl.json", tmp / "one.json"
        desc.write_text(json.dumps({names[c]: ["a short hooked bill", "has webbed feet", "brown wings", "a white belly",
                                               "a long tail", "black legs"] for c in classes}))
        sentences.write_text(json.dumps({names[c]: [f"A {names[c]} is a bird with {w}." for w in
                                                    ("a short bill", "long wings", "webbed feet", "a pale belly", "a dark back")]
                                         for c in classes}))
        one.write_text(json.dumps({names[classes[0]]: ["a beak"]}))
        n_desc, n_sent = 6 * len(classes), 5 * len(classes)

        control = run_stage(["build-attributes", "--from-json", str(one), *MODEL, "--store", str(tmp / "control")], env)
        startup = control["wall_s"]

        def stage(key: str, argv: list[str], **extra) -> dict:
            r = run_stage(argv, env)
            own = r["wall_s"] - startup  # negative for stages that load no model (dclip, cupl): then null
            rec = {"wall_s": r["wall_s"], "minus_startup_s": round(own, 2) if own > 0 else None,
                   "peak_rss_mib": r["peak_rss_mib"], **extra}
            stages[key] = rec
            return {**rec, "output": r["output"]}

        for cid, preset, methods in (("lazsl-cub-b32", "cub-b32", ["lazsl"]),
                                     ("wca-cub-b32", "wca-cub", ["clip", "clip-e", "dclip", "waffle", "cupl", "wca"])):
            store = ["--store", str(tmp / cid)]
            r = stage(f"{cid}: build-attributes (descriptors)", ["build-attributes", "--from-json", str(desc), *MODEL, *store],
                      texts=n_desc)
            stages[f"{cid}: build-attributes (descriptors)"]["texts_per_s"] = per_s(n_desc, r["minus_startup_s"])
            if cid.startswith("wca"):
                r = stage(f"{cid}: build-attributes (sentences)", ["build-attributes", "--from-json", str(sentences), *store],
                          texts=n_sent)
                stages[f"{cid}: build-attributes (sentences)"]["texts_per_s"] = per_s(n_sent, r["minus_startup_s"])
            r = stage(f"{cid}: index-images", ["index-images", "--dataset", "cub", "--root", str(root), "--preset", preset,
                                               "--workers", "0", *store])
            m = re.search(r"(\d+) images indexed \((\d+) regions\).*?([\d.]+) s \(", r["output"])
            n_img, n_reg, secs = int(m.group(1)), int(m.group(2)), float(m.group(3))
            stages[f"{cid}: index-images"].update(images=n_img, regions=n_reg, seconds_reported=secs,
                                                  regions_per_s=round(n_reg / secs, 2), images_per_s=round(n_img / secs, 3))
            for method in methods:
                extra = ["--templates", "pipeline/datasets/templates/cub.txt"] if method == "clip-e" else []
                r = stage(f"{cid}: classify {method}", ["classify", "--method", method, "--top-k", "0", "--limit", "0",
                                                        *extra, *store])
                secs = seconds_reported(r["output"], r"on \d+ images in ([\d.]+) s")
                stages[f"{cid}: classify {method}"].update(
                    seconds_reported=secs, images_per_s=round(n_img / secs, 2) if secs else None)

    index = {k.split(":")[0]: v for k, v in stages.items() if k.endswith("index-images")}
    estimate = {cid: {"index_hours_at_measured_rate": round(CUB_TEST_IMAGES / v["images_per_s"] / 3600, 2)}
                for cid, v in index.items()}
    print(json.dumps({
        "what": "docs/reproduce.md's lazsl-cub-b32 and wca-cub-b32 on a CUB miniature; ViT-B-32, random weights",
        "threads": args.threads, "images": args.images, "classes": len(classes),
        "startup_s": startup, "startup_peak_rss_mib": control["peak_rss_mib"],
        "stages": stages,
        "full_cub_test_estimate": estimate,
        "load_average": os.getloadavg(),
    }, indent=2))


if __name__ == "__main__":
    main()
