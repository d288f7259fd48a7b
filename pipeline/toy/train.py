"""Train the tiny CLIP (``zsl-tiny``) on the toy world with open_clip's own model and loss.

Every step draws fresh scenes of *training* combinations only (``make_split(split_seed).train``;
the held-out combinations never appear together in a training image) and cuts each scene into
views: the whole image (downscaled to the 64 px input, where small parts blur), random square
crops, and crops around one part, each captioned with what is visible in it
(:func:`pipeline.toy.world.caption_view`). Loss: ``open_clip.ClipLoss``.

    python -m pipeline.toy.train --steps 1500 --seed 0          # writes data/toy-clip.pt
    python -m pipeline.toy.train --steps 1500 --seed 0 --captions unbound   # data/toy-clip-unbound.pt

``--captions unbound`` trains the weak-binding encoder: the same scenes and views, captioned
with one list of the visible attributes that does not say which bird has which (web-caption
style), so nothing in the text teaches the encoder to bind an attribute to its bird.

Reproducible from the seed: same seed, same thread count, same machine -> same weights.
Writes the fp16 state dict and ``<out>.json`` (config, seed, steps, final loss, wall time, sha256).
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import time
from pathlib import Path

import numpy as np
import torch

from ..models import load_model, sha256_file
from . import world as tw

_logger = logging.getLogger(__name__)

DEFAULT_OUT = Path(__file__).resolve().parents[2] / "data" / "toy-clip.pt"  # the repository's data/
DEFAULT_OUT_UNBOUND = DEFAULT_OUT.with_name("toy-clip-unbound.pt")  # --captions unbound


def view_around(box, rng: np.random.Generator, size: int, min_side: float) -> tuple[int, int, int, int]:
    """A square view (side ~ U(min_side, 0.7)·size) centred near ``box``, inside the image."""
    side = int(round(rng.uniform(min_side, 0.7) * size))
    cx = (box[0] + box[2]) / 2 + rng.uniform(-0.25, 0.25) * side
    cy = (box[1] + box[3]) / 2 + rng.uniform(-0.25, 0.25) * side
    x0 = int(round(min(max(cx - side / 2, 0), size - side)))
    y0 = int(round(min(max(cy - side / 2, 0), size - side)))
    return (x0, y0, x0 + side, y0 + side)


def random_view(rng: np.random.Generator, size: int, crop_range) -> tuple[int, int, int, int]:
    """A square view anywhere in the image, side ~ U(crop_range)·size."""
    side = int(round(rng.uniform(*crop_range) * size))
    x0 = int(rng.integers(0, size - side + 1))
    y0 = int(rng.integers(0, size - side + 1))
    return (x0, y0, x0 + side, y0 + side)


def sample_views(rng: np.random.Generator, split: tw.ClassSplit, n_scenes: int, views_per_scene: int = 2,
                 nonce_pool: list[str] | None = None, p_two_birds: float = 0.25,
                 scale=tw.TRAIN_SCALE, p_full: float = 0.35, p_part: float = 0.35,
                 crop_range=(0.3, 0.9), p_dclip: float = 0.2, captions: str = "bound"):
    """Fresh training scenes cut into captioned views: [(PIL crop, caption)].

    ``captions``: ``bound`` groups the visible attributes per bird (:func:`world.caption_view`,
    toy-clip); ``unbound`` lists them for the whole view without saying which bird has which
    (:func:`world.caption_view_unbound`, toy-clip-unbound). Both modes draw scenes and views from
    the same distribution (same mix, crop sizes, two-bird rate); only the caption text differs.
    """
    if captions not in tw.CAPTION_MODES:
        raise ValueError(f"captions must be one of {tw.CAPTION_MODES}, not {captions!r}")
    caption = tw.caption_view if captions == "bound" else tw.caption_view_unbound
    size = tw.IMAGE_SIZE
    train = split.train
    out = []
    for _ in range(n_scenes):
        nb = 2 if rng.random() < p_two_birds else 1
        combos = [train[rng.integers(len(train))] for _ in range(nb)]
        scene = tw.render_scene(combos, rng, size=size, scale=scale if nb == 1 else tw.DISTRACTOR_SCALE, n_clutter=(2, 6))
        for _ in range(views_per_scene):
            r = rng.random()
            if r < p_full:
                view = (0, 0, size, size)
            elif r < p_full + p_part:
                bird = scene.birds[rng.integers(len(scene.birds))]
                part = tw.PART_NAMES[rng.integers(len(tw.PART_NAMES))]
                view = view_around(bird.boxes[part], rng, size, crop_range[0])
            else:
                view = random_view(rng, size, crop_range)
            nonce = nonce_pool[rng.integers(len(nonce_pool))] if nonce_pool else None
            cap = caption(scene, view, rng, nonce=nonce, p_dclip=p_dclip)
            img = scene.image if view == (0, 0, size, size) else scene.image.crop(view)
            out.append((img, cap))
    return out


def _param_groups(model, weight_decay: float):
    decay, no_decay = [], []
    for n, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim < 2 or "bn" in n or "ln" in n or "bias" in n or "logit_scale" in n or "embedding" in n:
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def fit_clip(model_name: str, seed: int, sample_batch, *, steps: int, lr: float = 1e-3, weight_decay: float = 0.1,
             warmup: int = 100, threads: int = 2, log_every: int = 50, max_minutes: float | None = None) -> dict:
    """The training loop the project's tiny CLIPs share: ``model_name`` from ``random:seed``,
    ``open_clip.ClipLoss``, AdamW (betas 0.9/0.98) with linear warmup and cosine decay,
    gradient clipping at 1, ``logit_scale`` clamped to ``log 100``.

    ``sample_batch(step)`` returns the step's ``[(PIL image, caption)]``. ``max_minutes`` stops
    early (the cosine schedule is then cut; ``steps_done`` says where). Returns the trained
    model (eval mode) and what the metadata records: loss history, final loss, wall time.
    """
    # heavy: imported on use
    import open_clip

    torch.set_num_threads(threads)
    lm = load_model(model_name, f"random:{seed}", device="cpu", precision="fp32")
    model, preprocess, tokenizer = lm.model, lm.preprocess, lm.tokenizer
    model.train()
    loss_fn = open_clip.ClipLoss()
    opt = torch.optim.AdamW(_param_groups(model, weight_decay), lr=lr, betas=(0.9, 0.98), eps=1e-6)

    def lr_at(step):
        if step < warmup:
            return lr * (step + 1) / warmup
        t = (step - warmup) / max(1, steps - warmup)
        return lr * 0.5 * (1 + math.cos(math.pi * t))

    tok_cache: dict[str, torch.Tensor] = {}

    def tokenize(caps):
        missing = [c for c in dict.fromkeys(caps) if c not in tok_cache]
        if missing:
            for c, t in zip(missing, tokenizer(missing)):
                tok_cache[c] = t
            if len(tok_cache) > 200000:
                tok_cache.clear()
        return torch.stack([tok_cache[c] for c in caps])

    t0 = time.time()
    ema, lv, done = None, float("nan"), 0
    history = []
    for step in range(steps):
        views = sample_batch(step)
        images = torch.stack([preprocess(im) for im, _ in views])
        texts = tokenize([c for _, c in views])
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        img_f, txt_f, scale = model(images, texts)
        loss = loss_fn(img_f, txt_f, scale)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        lv = loss.item()
        ema = lv if ema is None else 0.98 * ema + 0.02 * lv
        done = step + 1
        el = time.time() - t0
        if done % log_every == 0 or step == 0 or done == steps:
            print(f"step {done}/{steps} loss {lv:.3f} (ema {ema:.3f}) scale {float(scale):.1f} "
                  f"lr {lr_at(step):.2e} {el:.0f}s", flush=True)
            history.append({"step": done, "loss": round(lv, 4), "ema": round(ema, 4), "s": round(el, 1)})
        if max_minutes is not None and el > 60 * max_minutes:
            print(f"stopping at step {done}: {el / 60:.1f} min > max_minutes", flush=True)
            break
    model.eval()
    return {"model": model, "steps_done": done, "final_loss": round(float(lv), 4),
            "final_loss_ema": round(float(ema), 4), "wall_time_s": round(time.time() - t0, 1), "loss_history": history}


def save_weights(model, out_path, meta: dict) -> dict:
    """Write the fp16 state dict to ``out_path`` and ``meta`` (plus file facts) to ``<out>.json``."""
    # heavy: imported on use
    import open_clip

    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()}
    torch.save(state, out_path)
    head = {"model": meta.pop("model"), "weights": out_path.name, "dtype": "float16", "bytes": out_path.stat().st_size,
            "sha256": sha256_file(out_path), "params": int(sum(v.numel() for v in state.values()))}
    meta = {**head, **meta, "torch": torch.__version__, "open_clip": open_clip.__version__}
    history = meta.pop("loss_history", None)
    tail = {k: meta.pop(k) for k in list(meta) if k in ("heldout_classes", "seen_pairs", "unseen_pairs")}
    meta = {**meta, "loss_history": history, **tail} if history is not None else {**meta, **tail}
    out_path.with_suffix(".json").write_text(json.dumps(meta, indent=1) + "\n")
    print(f"wrote {out_path} ({meta['bytes'] / 1e6:.1f} MB) in {meta.get('wall_time_s', 0) / 60:.1f} min, "
          f"final loss ema {meta.get('final_loss_ema')}")
    return meta


def train_toy_clip(
    out_path=DEFAULT_OUT,
    steps: int = 1500,  # what data/toy-clip.json records for the shipped weights
    seed: int = 0,
    batch_size: int = 128,
    lr: float = 1e-3,
    weight_decay: float = 0.1,
    warmup: int = 100,
    threads: int = 2,
    split_seed: int = 0,
    log_every: int = 50,
    model_name: str = "zsl-tiny",
    **view_kwargs,
) -> dict:
    """Train ``model_name`` from random init on toy-world views; write fp16 weights + metadata.

    Args:
        out_path: the ``.pt`` file (a state dict of fp16 tensors); ``<out>.json`` beside it.
        steps, batch_size, lr, weight_decay, warmup: AdamW with linear warmup and cosine decay.
        seed: model init and the stream of training scenes.
        threads: torch intra-op threads (the wall time in the metadata depends on it).
        split_seed: which class combinations are held out (never drawn here).
        view_kwargs: passed to :func:`sample_views` (view mix, crop range, DCLIP-caption rate).

    Returns the metadata dict that is written to ``<out>.json``.
    """
    split = tw.make_split(split_seed)
    rng = np.random.default_rng([seed, 20250])
    taken = set(split.names.values())
    nonce_pool = tw.made_up_names(4000, np.random.default_rng([seed, 31337]), taken=taken)
    n_scenes = batch_size // 2
    fit = fit_clip(model_name, seed,
                   lambda step: sample_views(rng, split, n_scenes, 2, nonce_pool=nonce_pool, **view_kwargs),
                   steps=steps, lr=lr, weight_decay=weight_decay, warmup=warmup, threads=threads, log_every=log_every)
    meta = {
        "model": model_name, "seed": seed, "split_seed": split_seed, "steps": steps, "batch_size": batch_size, "lr": lr,
        "weight_decay": weight_decay, "warmup": warmup, "threads": threads,
        "views": {"views_per_scene": 2, **view_kwargs}, "final_loss": fit["final_loss"],
        "final_loss_ema": fit["final_loss_ema"], "wall_time_s": fit["wall_time_s"], "loss_history": fit["loss_history"],
        "heldout_classes": list(split.heldout_classes()),
    }
    return save_weights(fit["model"], out_path, meta)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m pipeline.toy.train", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=None, help="default: data/toy-clip.pt, or data/toy-clip-unbound.pt "
                    "with --captions unbound")
    ap.add_argument("--captions", choices=tw.CAPTION_MODES, default="bound",
                    help="bound: attributes grouped per bird (toy-clip); unbound: one list per view, "
                         "not saying which bird has which (toy-clip-unbound, the weak-binding encoder)")
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args(argv)
    out = a.out or (DEFAULT_OUT if a.captions == "bound" else DEFAULT_OUT_UNBOUND)
    kwargs = {} if a.captions == "bound" else {"captions": a.captions}  # toy-clip's record stays as it was
    train_toy_clip(out, steps=a.steps, seed=a.seed, batch_size=a.batch_size, lr=a.lr, threads=a.threads, **kwargs)


if __name__ == "__main__":
    main()
