"""(state, object) pairs on the command line: the options ``build-attributes``, ``classify`` and
``evaluate`` take for them, and ``make-composeworld``."""
from __future__ import annotations

import click

from ..config import MethodConfig
from . import cli
from .options import check_output_folder, command, config_option, number_option, output_option, stack

_FILE = click.Path(dir_okay=False)


def pair_options(fn):
    """``build-attributes`` options for a pair vocabulary (all None / False when not given)."""
    return stack(
        click.option("--states", type=_FILE, default=None, help="States of (state, object) pairs, one a line "
                     "(with --objects: every state x object is a pair, unless --pairs names them)."),
        click.option("--objects", type=_FILE, default=None, help="Objects of (state, object) pairs, one a line."),
        click.option("--pairs", "pairs_file", type=_FILE, default=None,
                     help="The pairs, one 'state object' a line (CZSL *_pairs.txt; also state<TAB>object)."),
        click.option("--seen", "seen_file", type=_FILE, default=None,
                     help="The training ('seen') pairs, one a line; the other pairs are unseen. Needed for CZSL metrics."),
        click.option("--open-world", "open_world_pairs", is_flag=True, default=False,
                     help="Also store the rest of states x objects as open-world-only pairs (for classify --open-world)."),
        click.option("--attributes-states", type=_FILE, default=None, help="A DCLIP JSON {state: [descriptor]}."),
        click.option("--attributes-objects", type=_FILE, default=None, help="A DCLIP JSON {object: [descriptor]}."),
        click.option("--attributes-pairs", type=_FILE, default=None,
                     help="A DCLIP JSON {'state object': [descriptor]} (default: a pair has its state's and its object's)."),
    )(fn)


PAIR_KEYS = ("states", "objects", "pairs_file", "seen_file", "open_world_pairs", "attributes_states",
             "attributes_objects", "attributes_pairs")


def pairs_given(values: dict) -> bool:
    return any(values.get(k) for k in PAIR_KEYS)


def build_pairs(values: dict, classes, from_json, max_file_bytes, model_name, pretrained, device, store) -> None:
    """``build-attributes --states/--objects/--pairs ...``: store and encode the pair vocabulary."""
    from ..stages.compositional import build_compositional, read_vocabulary
    from .options import load_store_model, open_store, show_progress

    if classes or from_json:
        raise click.UsageError("Give a class list / --from-json, or a pair vocabulary (--states/--objects/--pairs), not both.")
    if not values.get("states") and not values.get("pairs_file"):
        raise click.UsageError("A pair vocabulary needs --states FILE --objects FILE, or --pairs FILE.")
    vocab = read_vocabulary(values.get("states"), values.get("objects"), values.get("pairs_file"), values.get("seen_file"),
                            open_world=values.get("open_world_pairs", False), max_bytes=max_file_bytes)
    with open_store(store) as cat:
        model = load_store_model(cat, model_name, pretrained, device)
        report = build_compositional(cat, model, vocab, attributes_states=values.get("attributes_states"),
                                     attributes_objects=values.get("attributes_objects"),
                                     attributes_pairs=values.get("attributes_pairs"), max_bytes=max_file_bytes,
                                     progress=show_progress())
        for line in report.lines():
            click.echo(line)
        click.echo(f"store: {cat.root}")


def czsl_method_options(fn):
    """``classify``/``evaluate`` options of the czsl-* methods (MethodConfig fields; None = not given)."""
    return stack(
        *(config_option(MethodConfig, n) for n in ("pair_weight", "state_weight", "object_weight", "logit_scale")),
        click.option("--open-world", "open_world", is_flag=True, default=None,
                     help=MethodConfig.field_meta("open_world")["help"]),
        config_option(MethodConfig, "feasibility_threshold"),
    )(fn)


CZSL_CONFIG_KEYS = ("pair_weight", "state_weight", "object_weight", "logit_scale", "open_world", "feasibility_threshold")


def czsl_config(values: dict) -> dict:
    """The given czsl-* settings as config values (a flag not given is None: not an override)."""
    out = {k: values.get(k) for k in CZSL_CONFIG_KEYS}
    out["open_world"] = True if out["open_world"] else None
    return out


def run_notes(cat, report) -> list[str]:
    """What a czsl-* run should tell the user: its notes and the pairs feasibility left out."""
    from stores import tables

    lines = [f"run {report.run_id}: note: {n}" for n in report.notes]
    feas = tables.pair_feasibility_rows(cat, report.run_id)  # only compositional runs have rows
    removed = [r["name"] for r in feas if r["removed"]]
    if feas:
        lines.append(f"run {report.run_id}: feasibility left out {len(removed)} of {len(feas)} pairs"
                     + (f": {', '.join(removed[:12])}" + (" ..." if len(removed) > 12 else "") if removed else "")
                     + " (table pair_feasibility)")
    return lines


@command(cli, "make-composeworld")
@output_option("folder", "images/<state>_<object>/*.png, states/objects/pairs lists, attributes_*.json, concepts.txt, "
               "boxes.jsonl, world.json.", required=True)
@number_option("--n-per-pair", kind=int, lo=1, hi=100_000, default=10, show_default=True,
               help="Images per closed-world pair (seen and unseen).")
@number_option("--seed", kind=int, lo=0, hi=2**63 - 1, default=0, show_default=True,
               help="Image seed (the pair split does not change).")
@click.option("--setting", type=click.Choice(["single", "distractors"]), default="single", show_default=True,
              help="single: one object among clutter; distractors: plus an object of a seen pair sharing neither "
              "its state nor its object.")
@number_option("--split-seed", kind=int, lo=0, hi=2**63 - 1, default=0, show_default=True,
               help="Which pairs are seen / unseen / open-world-only (toy-compose: 0).")
def make_composeworld_cmd(output, n_per_pair, seed, setting, split_seed):
    """Write a synthetic (state, object) world: objects in states ("a striped cup"), some pairs
    never seen in toy-compose's training.

    \b
    pipeline make-composeworld -o cw/
    pipeline build-attributes --states cw/states.txt --objects cw/objects.txt --pairs cw/pairs.txt \\
        --seen cw/seen_pairs.txt --attributes-states cw/attributes_states.json \\
        --attributes-objects cw/attributes_objects.json --pretrained toy-compose
    pipeline index-images cw/images --n-crops 40 --crop-min 0.4
    pipeline evaluate --method clip,czsl-local --theta 0.95
    """
    from ..toy.compose_world import make_compose_world

    w = make_compose_world(check_output_folder(output), n_per_pair=n_per_pair, seed=seed, setting=setting,
                           split_seed=split_seed)
    click.echo(f"wrote {len(w['seen_pairs'])} seen + {len(w['unseen_pairs'])} unseen pairs x {n_per_pair} images "
               f"({setting}; {len(w['open_only_pairs'])} open-world-only pairs without images) to {output}")

