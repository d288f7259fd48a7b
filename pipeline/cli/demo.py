"""``demo`` and ``make-toyworld``."""
from __future__ import annotations

import click

from stores.catalog import resolve_store_path

from ..errors import InputError
from .group import cli
from .options import check_output_folder, command, number_option, open_store, output_option, show_progress, store_option


@command(cli, "demo")
@output_option("folder", "the generated world (images, attributes, boxes) and the report.", default="./zsl-demo")
@store_option
def demo_cmd(output, store):
    """Run every stage offline on a small generated world, then show how to query it.

    The store is --store / ZSL_STORE (default ./zsl-store), so `pipeline sql` finds it next.
    """
    from ..demo import run_demo  # heavy: imported on use (every stage, torch)

    out = check_output_folder(output)
    root = resolve_store_path(store)
    if not root.parent.is_dir() or (root.exists() and not root.is_dir()):  # checked before any work
        raise InputError(f"--store {root}: give a folder whose parent exists (none is created for you).")
    with open_store(store) as cat:
        run_demo(cat, out, progress=show_progress())


@command(cli, "make-toyworld")
@output_option("folder", "images/<class>/*.png, attributes.json, boxes.jsonl, scenes.jsonl, world.json.", required=True)
@number_option("--n-per-class", kind=int, lo=1, hi=100_000, default=20, show_default=True, help="Images per class.")
@number_option("--seed", kind=int, lo=0, hi=2**63 - 1, default=0, show_default=True, help="Image seed (the class split does not change).")
@click.option("--setting", type=click.Choice(["parts", "distractors"]), default="parts", show_default=True,
              help="parts: one bird among unrelated clutter; distractors: plus a bird sharing two attributes "
              "with another class.")
@number_option("--split-seed", kind=int, lo=0, hi=2**63 - 1, default=0, show_default=True,
               help="Which combinations are held out (toy-clip: 0).")
@click.option("--classes", type=click.Choice(("heldout", "train")), default="heldout", show_default=True,
              help="Which classes to draw: the held-out ones (zero-shot evaluation) or the training ones.")
@number_option("--object-scale", kind=float, lo=0.2, hi=2.0, default=1.0, show_default=True,
               help="Bird size relative to the setting's (0.5, 1, 1.5 in the benchmarks); capped where the birds "
               "would no longer fit (world.json records the range used).")
def make_toyworld_cmd(output, n_per_class, seed, setting, split_seed, classes, object_scale):
    """Write a synthetic bird world for the demo, tests and benchmarks.

    \b
    pipeline make-toyworld -o toy/
    pipeline build-attributes --from-json toy/attributes.json --pretrained toy-clip
    pipeline index-images toy/images --preset toy-demo
    pipeline classify --method lazsl
    """
    # heavy: imported on use
    from ..toy.world import make_toyworld

    w = make_toyworld(check_output_folder(output), n_per_class=n_per_class, seed=seed, setting=setting,
                      split_seed=split_seed, classes=classes, object_scale=object_scale)
    n = len(w["heldout_classes"] if classes == "heldout" else w["train_classes"])
    click.echo(f"wrote {n} classes x {n_per_class} images ({setting}) to {output}")
