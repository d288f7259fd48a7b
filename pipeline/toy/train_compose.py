"""Train a tiny CLIP (``zsl-compose``) on the compositional toy world with open_clip's ClipLoss.

The recipe of :mod:`pipeline.toy.train` (the same loop, :func:`pipeline.toy.train.fit_clip`)
on :mod:`pipeline.toy.compose_world`: every step draws fresh scenes of **seen** pairs only
(``make_pair_split(split_seed).seen``; an unseen or open-world-only pair never appears, neither
as an object in an image nor in a caption) and cuts each scene into views: the whole image
(downscaled to the 64 px input), crops around the state patch or the object's distinctive part,
and random square crops, each captioned with what is visible
(:func:`pipeline.toy.compose_world.caption_view`: "a striped cup", "part of a wet boot",
"a close-up of thin horizontal lines", "a curved handle").

    python -m pipeline.toy.train_compose --steps 900 --seed 0 --max-minutes 34   # data/toy-compose.pt

Writes the fp16 state dict and ``<out>.json`` (config, seed, steps, loss history, wall time,
sha256, the seen pairs). Load with ``load_model("zsl-compose", "toy-compose")`` (or
``--pretrained toy-compose``, which implies ``--model zsl-compose``).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from . import compose_world as cw
from . import world as tw
from .train import fit_clip, random_view, save_weights, view_around

DEFAULT_OUT = Path(__file__).resolve().parents[2] / "data" / "toy-compose.pt"  # the repository's data/
MODEL_NAME = "zsl-compose"


def sample_views(rng: np.random.Generator, split: cw.PairSplit, n_scenes: int, views_per_scene: int = 2,
                 nonce_pool: list[str] | None = None, p_two: float = 0.25, p_full: float = 0.35,
                 p_local: float = 0.35, crop_range=(0.3, 0.9), p_dclip: float = 0.15):
    """Fresh training scenes of seen pairs cut into captioned views: [(PIL image, caption)]."""
    size = cw.IMAGE_SIZE
    seen = split.seen
    out = []
    for _ in range(n_scenes):
        n = 2 if rng.random() < p_two else 1
        pairs = [seen[rng.integers(len(seen))] for _ in range(n)]
        side = cw.TRAIN_SIZE if n == 1 else cw.DISTRACTOR_SIZE
        scene = cw.render_scene(pairs, rng, size=size, side=side, n_clutter=(2, 6))
        for _ in range(views_per_scene):
            r = rng.random()
            if r < p_full:
                view = (0, 0, size, size)
            elif r < p_full + p_local:
                it = scene.items[rng.integers(len(scene.items))]
                b = it.state_box if rng.random() < 0.6 else it.part_box
                view = view_around(b, rng, size, crop_range[0])
            else:
                view = random_view(rng, size, crop_range)
            nonce = nonce_pool[rng.integers(len(nonce_pool))] if nonce_pool else None
            cap = cw.caption_view(scene, view, rng, nonce=nonce, p_dclip=p_dclip)
            img = scene.image if view == (0, 0, size, size) else scene.image.crop(view)
            out.append((img, cap))
    return out


def train_compose_clip(out_path=DEFAULT_OUT, steps: int = 1400, seed: int = 0, batch_size: int = 128,
                       lr: float = 1e-3, weight_decay: float = 0.1, warmup: int = 100, threads: int = 2,
                       split_seed: int = 0, log_every: int = 50, model_name: str = MODEL_NAME,
                       max_minutes: float | None = None) -> dict:
    """Train ``model_name`` from random init on compositional-world views; write fp16 weights + metadata.

    The loop and schedule are :func:`pipeline.toy.train.fit_clip`'s; ``max_minutes`` stops early
    (the cosine schedule is then cut, and ``steps_done`` in the metadata says so).
    """
    split = cw.make_pair_split(split_seed)
    rng = np.random.default_rng([seed, 20251])
    taken = set(cw.STATE_NAMES) | set(cw.OBJECT_NAMES)
    nonce_pool = tw.made_up_names(4000, np.random.default_rng([seed, 31338]), taken=taken)
    fit = fit_clip(model_name, seed, lambda step: sample_views(rng, split, batch_size // 2, 2, nonce_pool=nonce_pool),
                   steps=steps, lr=lr, weight_decay=weight_decay, warmup=warmup, threads=threads, log_every=log_every,
                   max_minutes=max_minutes)
    meta = {
        "model": model_name, "seed": seed, "split_seed": split_seed, "steps": steps, "steps_done": fit["steps_done"],
        "batch_size": batch_size, "lr": lr, "weight_decay": weight_decay, "warmup": warmup, "threads": threads,
        "final_loss": fit["final_loss"], "final_loss_ema": fit["final_loss_ema"], "wall_time_s": fit["wall_time_s"],
        "loss_history": fit["loss_history"],
        "seen_pairs": [cw.pair_name(*p) for p in split.seen], "unseen_pairs": [cw.pair_name(*p) for p in split.unseen],
    }
    return save_weights(fit["model"], out_path, meta)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m pipeline.toy.train_compose", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(DEFAULT_OUT))
    ap.add_argument("--steps", type=int, default=1400)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-minutes", type=float, default=None)
    a = ap.parse_args(argv)
    train_compose_clip(a.out, steps=a.steps, seed=a.seed, batch_size=a.batch_size, lr=a.lr, threads=a.threads,
                       max_minutes=a.max_minutes)


if __name__ == "__main__":
    main()
