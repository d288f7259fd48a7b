"""How well does an encoder bind attributes to objects? A swap test on two-bird scenes.

    PYTHONPATH=$PWD python benchmarks/bench_binding_probe.py --weights toy-clip,toy-clip-unbound --seed 1000

For every image of the toy ``distractors`` world (two birds: the labelled one and a distractor
sharing two attributes with another class), two captions name the same attributes:

* the true one, grouped per bird: "a bird with a red crest, striped wings, ... and a bird with
  a blue crest, spotted wings, ...";
* a swapped one: one part on which the birds differ trades its value between them, so the
  caption holds exactly the same attributes (the same bag of words) bound wrongly.

The probe counts how often the full view's embedding (and, at twice the resolution, a square
crop around both birds) is closer to the true caption (chance
50%: a bag-of-attributes encoder cannot tell them apart; Winoground's and ARO's attribution
test in miniature). Each image is swapped on every part where its birds differ and the
figure is averaged over those pairs. Reported per encoder and bird scale, with the mean
cosine gap ``cos(img, true) - cos(img, swapped)``.

A second figure asks the same of single birds, the question a region method relies on: the
crop of the labelled bird's box (square, 10% margin) against a caption that replaces one of
its attributes by the distractor's value on that part ("does this crop show *this* bird's
attributes"). That tests recognition inside one object, not binding across two, and is what
``best-region`` needs.

Prints one JSON object; ``--out`` also writes it.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from bench_object_scales import bird_crop, world_scenes  # noqa: E402


def bird_phrase(combo, tw) -> str:
    return "a bird with " + tw._join(tw.combo_descriptors(combo))


def scene_captions(a, b, tw) -> list[tuple[str, str]]:
    """(true, swapped) caption pairs of a two-bird scene: one per part where the birds differ."""
    true = f"{bird_phrase(a, tw)} and {bird_phrase(b, tw)}"
    pairs = []
    for i in range(len(a)):
        if a[i] == b[i]:
            continue
        sa, sb = list(a), list(b)
        sa[i], sb[i] = b[i], a[i]
        pairs.append((true, f"{bird_phrase(tuple(sa), tw)} and {bird_phrase(tuple(sb), tw)}"))
    return pairs


def probe(lm, setting_scale: float, seed: int, n_per_class: int, tw) -> dict:
    import torch

    scenes = [scene for scene, _, _ in world_scenes("distractors", setting_scale, seed, n_per_class)]
    full = lm.encode_images(torch.stack([lm.preprocess(s.image) for s in scenes])).numpy()
    crops = lm.encode_images(torch.stack([lm.preprocess(bird_crop(s)) for s in scenes])).numpy()
    pair = lm.encode_images(torch.stack([lm.preprocess(bird_crop(s, birds=2)) for s in scenes])).numpy()
    wins, gaps, pair_wins, crop_wins, crop_gaps = [], [], [], [], []
    for k, s in enumerate(scenes):
        a, b = s.birds[0].combo, s.birds[1].combo
        pairs = scene_captions(a, b, tw)
        if pairs:
            t = np.asarray(lm.encode_texts([x for p in pairs for x in p]))
            g = t[0::2] @ full[k] - t[1::2] @ full[k]
            wins.append(float((g > 0).mean()))
            gaps.append(float(g.mean()))
            pair_wins.append(float(((t[0::2] @ pair[k] - t[1::2] @ pair[k]) > 0).mean()))
            # the labelled bird alone against its caption with one value taken from the distractor
            own = bird_phrase(a, tw)
            wrong = [bird_phrase(tuple(b[i] if j == i else a[j] for j in range(len(a))), tw)
                     for i in range(len(a)) if a[i] != b[i]]
            tc = np.asarray(lm.encode_texts([own] + wrong))
            cg = tc[0] @ crops[k] - tc[1:] @ crops[k]
            crop_wins.append(float((cg > 0).mean()))
            crop_gaps.append(float(cg.mean()))
    return {"images": len(wins),
            "scene_swap_accuracy": round(float(np.mean(wins)), 4),
            "scene_swap_mean_cos_gap": round(float(np.mean(gaps)), 5),
            "pair_crop_swap_accuracy": round(float(np.mean(pair_wins)), 4),
            "bird_crop_accuracy": round(float(np.mean(crop_wins)), 4),
            "bird_crop_mean_cos_gap": round(float(np.mean(crop_gaps)), 5)}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--weights", default="toy-clip,toy-clip-unbound", help="shipped tags, comma-separated")
    ap.add_argument("--seed", type=int, default=1000)
    ap.add_argument("--n-per-class", type=int, default=10)
    ap.add_argument("--scales", default="0.5,1,1.5")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    import torch

    from pipeline.models import load_model
    from pipeline.toy import world as tw

    torch.set_num_threads(1)
    report = {"command": "python benchmarks/bench_binding_probe.py " + " ".join(sys.argv[1:] if argv is None else argv),
              "seed": args.seed, "n_per_class": args.n_per_class, "chance": 0.5, "encoders": {}}
    for weights in args.weights.split(","):
        lm = load_model(None, weights, device="cpu", precision="fp32")
        report["encoders"][weights] = {"fingerprint": lm.fingerprint, "by_scale": {
            f"x{x:g}": probe(lm, x, args.seed, args.n_per_class, tw) for x in map(float, args.scales.split(","))}}
    text = json.dumps(report, indent=1)
    if args.out:
        Path(args.out).write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
