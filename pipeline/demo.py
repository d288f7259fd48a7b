"""``pipeline demo``: every stage, offline, with zero downloads, on the toy bird world."""
from __future__ import annotations

import time
from pathlib import Path

import click

from stores import tables
from stores.catalog import Catalog, resolve_store_path

from .config import get_preset
from .stages.methods import resolve_method_config
from .models import load_model
from .stages.classify import classify

DEMO_PRESET = "toy-demo"  # pipeline/presets/toy-demo.json: 30 crops, crop-min 0.5, all classes scored
DEMO_METHODS = ("clip", "dclip", "wca", "lazsl")
# the suggested faithfulness run: about a minute on 2 idle cores (LaZSL re-run on 12 perturbed copies of 12 images,
# full view + 30 crops each), enough images for paired bootstrap intervals
DEMO_FAITHFULNESS_IMAGES, DEMO_FAITHFULNESS_STEPS = 12, 5


def run_demo(cat: Catalog, out: str | Path, *, n_per_class: int = 20, progress: bool = True) -> Path:
    """The toy bird world (held-out classes) with the shipped toy-clip model: all stages, then
    the per-method accuracy table and the HTML report, into the open store ``cat`` (the command
    opens --store, else ZSL_STORE, else ./zsl-store, so the next command finds it). Offline and a
    few tens of seconds on 2 CPU cores."""
    # heavy: imported on use (the stages import torch; `pipeline --help` imports this module)
    from .explain.report import write_report
    from .stages.attributes import import_attribute_file
    from .stages.evaluate import evaluate_run, format_table
    from .stages.index_images import index_images
    from .toy.world import make_toyworld

    t0 = time.perf_counter()
    out = Path(out).resolve()
    world_dir = out / "world"
    model = load_model(None, "toy-clip", device="cpu")
    preset = get_preset(DEMO_PRESET)
    cat.check_model(model.fingerprint)  # a store of another model fails here, before any work
    out.mkdir(exist_ok=True)
    click.echo(f"[1/5] make-toyworld: birds of parts, held-out classes, in {world_dir}")
    world = make_toyworld(world_dir, n_per_class=n_per_class, seed=1, setting="parts")
    click.echo(f"      model: {model.fingerprint} (the tiny CLIP trained on this world; these classes were never seen)")
    click.echo("[2/5] build-attributes")
    for line in import_attribute_file(cat, model, world_dir / "attributes.json", progress=progress).lines():
        click.echo("      " + line)
    click.echo(f"[3/5] index-images --preset {DEMO_PRESET}")
    rep = index_images(cat, model, [str(world_dir / "images")], preset.region_config(), preset=DEMO_PRESET,
                       progress=progress)
    for line in rep.lines():
        click.echo("      " + line)
    click.echo(f"[4/5] classify --method {','.join(DEMO_METHODS)}")
    resolved = resolve_method_config({}, DEMO_PRESET)
    runs = [classify(cat, m, resolved.config, model=model, provenance={"preset": DEMO_PRESET}, progress=False)
            for m in DEMO_METHODS]
    for r in tables.top_attributes(cat, runs[-1].run_id, n_classes=1)[:3]:
        click.echo(f"      {Path(r['path']).parent.name}/{Path(r['path']).name}: {r['name']} ({r['score']:.3f}) "
                   f"[{'; '.join(r['attributes'])}]")
    click.echo(f"[5/5] evaluate ({len(world['heldout_classes'])} held-out classes; toy-world figures, not real-world ones)")
    click.echo("      " + format_table([evaluate_run(cat, r.run_id) for r in runs]).replace("\n", "\n      "))
    report = write_report(cat, run_id=runs[-1].run_id, out=out / "report.html", limit=12, model=model)  # plan-dense maps
    root = cat.root
    click.echo(f"\ndone in {time.perf_counter() - t0:.1f} s. Store: {root}")
    click.echo(f"Report: {report}")
    flag = "" if root == resolve_store_path(None) else f" --store {root}"  # the next command finds it unaided
    click.echo("Try:")
    click.echo(f'  pipeline sql{flag} "select count(*) from alignments"')
    click.echo(f'  pipeline sql{flag} "select class_name, attribute, sum(contribution) as c from contributions '
               'group by all order by c desc limit 10"')
    click.echo(f"  pipeline explain{flag} {world_dir / 'images'}/{_first_image(world_dir)}   # maps (.png + .npy)")
    click.echo(f"  pipeline faithfulness{flag} --boxes {world_dir / 'boxes.jsonl'} --max-images {DEMO_FAITHFULNESS_IMAGES} "
               f"--steps {DEMO_FAITHFULNESS_STEPS}"
               "   # plan-dense maps vs random plan-dense maps")
    return root


def _first_image(world_dir: Path) -> str:
    first = min((world_dir / "images").rglob("*.png"))
    return str(first.relative_to(world_dir / "images"))
