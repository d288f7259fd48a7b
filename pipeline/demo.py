"""``pipeline demo``: every stage, offline, with zero downloads."""
from __future__ import annotations

import json
import time
from pathlib import Path

import click
import numpy as np
from PIL import Image, ImageDraw

from stores.catalog import Catalog

DEMO_CLASSES = {
    "red circle": ["a round shape", "red colour", "a smooth outline"],
    "blue square": ["four straight sides", "blue colour", "sharp corners"],
    "green triangle": ["three corners", "green colour", "a pointed top"],
    "yellow bar": ["a long thin shape", "yellow colour", "parallel edges"],
}
_COLOURS = {"red": (220, 40, 40), "blue": (40, 70, 220), "green": (40, 170, 60), "yellow": (230, 210, 40)}


def make_shapes_world(out: Path, per_class: int = 6, seed: int = 0) -> tuple[Path, Path]:
    """A few PNGs per class (one folder per class) and a DCLIP-style attribute JSON."""
    rng = np.random.default_rng(seed)
    img_dir = out / "images"
    for name in DEMO_CLASSES:
        colour, shape = name.split()
        d = img_dir / name.replace(" ", "_")
        d.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            im = Image.new("RGB", (128, 128), tuple(int(v) for v in rng.integers(200, 255, 3)))
            dr = ImageDraw.Draw(im)
            cx, cy, r = (int(v) for v in (*rng.integers(40, 88, 2), rng.integers(18, 34)))
            fill = _COLOURS[colour]
            if shape == "circle":
                dr.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
            elif shape == "square":
                dr.rectangle([cx - r, cy - r, cx + r, cy + r], fill=fill)
            elif shape == "triangle":
                dr.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)
            else:
                dr.rectangle([cx - r, cy - 6, cx + r, cy + 6], fill=fill)
            im.save(d / f"{i:03d}.png")
    attrs = out / "attributes.json"
    attrs.write_text(json.dumps(DEMO_CLASSES, indent=2))
    return img_dir, attrs


def run_demo(out: str | Path, *, n_per_class: int = 20, n_crops: int = 30, progress: bool = True) -> Path:
    """The toy bird world (held-out classes) with the shipped toy-clip model: all stages, then
    the per-method accuracy table. Offline and a few tens of seconds on 2 CPU cores."""
    from .attributes import import_attribute_file
    from .classify import MethodParams, classify, top_attributes
    from .evaluate import evaluate_run, format_table
    from .index_images import index_images
    from .models import load_model
    from .regions import RegionConfig
    from .toyworld import make_toyworld

    t0 = time.perf_counter()
    out = Path(out).resolve()
    store = out / "store"
    world_dir = out / "world"
    click.echo(f"[1/5] make-toyworld: birds of parts, held-out classes, in {world_dir}")
    world = make_toyworld(world_dir, n_per_class=n_per_class, seed=1, setting="parts")
    model = load_model("zsl-tiny", "toy-clip", device="cpu")
    click.echo(f"      model: {model.fingerprint} (the tiny CLIP trained on this world; these classes were never seen)")
    with Catalog(store) as cat:
        cat.set_meta("model_spec", json.dumps({"name": model.name, "pretrained": model.pretrained}))
        click.echo("[2/5] build-attributes")
        for line in import_attribute_file(cat, model, world_dir / "attributes.json", progress=progress).lines():
            click.echo("      " + line)
        click.echo("[3/5] index-images")
        rep = index_images(cat, model, [str(world_dir / "images")], RegionConfig(n_crops=n_crops, crop_min=0.5), progress=progress)
        for line in rep.lines():
            click.echo("      " + line)
        click.echo("[4/5] classify --method clip,dclip,wca,lazsl")
        runs = [classify(cat, m, MethodParams(top_k=0), model=model, progress=False) for m in ("clip", "dclip", "wca", "lazsl")]
        for r in top_attributes(cat, runs[-1].run_id, n_classes=1)[:3]:
            click.echo(f"      {Path(r['path']).parent.name}/{Path(r['path']).name}: {r['name']} ({r['score']:.3f}) [{'; '.join(r['attributes'])}]")
        click.echo(f"[5/5] evaluate ({len(world['heldout_classes'])} held-out classes; toy-world figures, not real-world ones)")
        click.echo("      " + format_table([evaluate_run(cat, r.run_id) for r in runs]).replace("\n", "\n      "))
        report = _maybe_report(cat, runs[-1].run_id, out)
    click.echo(f"\ndone in {time.perf_counter() - t0:.1f} s. Store: {store}")
    if report:
        click.echo(f"Report: {report}")
    click.echo("Try:")
    click.echo(f'  pipeline sql --store {store} "select count(*) from alignments"')
    click.echo(
        f'  pipeline sql --store {store} "select class_name, attribute, sum(contribution) as c from contributions '
        'group by all order by c desc limit 10"'
    )
    return store


def _maybe_report(cat, run_id: int, out: Path):
    """Write the HTML report of the explanations stage, when that stage is installed."""
    try:
        from .report import write_report
    except ImportError:
        return None
    return write_report(cat, run_id=run_id, out=out / "report.html", limit=12, progress=False)
