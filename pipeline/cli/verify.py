"""``verify`` (and ``--repair``) and ``remove-images``: keeping a store whole."""
from __future__ import annotations

import sys

import click
import duckdb

from stores.catalog import CATALOG_FILE, Catalog, is_lock_conflict, resolve_store_path
from stores.errors import StoreError, StoreVersionError
from stores.locks import DEFAULT_WAIT

from .group import cli
from .options import (
    _say_waiting,
    command,
    format_option,
    limit_option,
    load_store_model,
    model_options,
    open_store,
    show_progress,
    store_option,
)
from .output import emit, format_records, format_rows

COLUMNS = ["check", "where", "problem", "repair"]


def _print(records: list[dict], fmt: str) -> None:
    if not records:
        if fmt != "table":
            emit(format_records([], fmt, COLUMNS))
        return
    if fmt == "table":
        emit(format_rows(COLUMNS, [[r[c] for c in COLUMNS] for r in records], "table", max_width=160))
    else:
        emit(format_records(records, fmt, COLUMNS))


def _wait() -> float:
    ctx = click.get_current_context(silent=True)
    return ctx.meta.get("zsl_wait", DEFAULT_WAIT) if ctx is not None else DEFAULT_WAIT


def _summary(cat: Catalog) -> str:
    from stores import tables  # heavy: imported on use (numpy, pyarrow)

    images = tables.image_count(cat)
    shards = len(cat.shard_files("images")) + len(cat.shard_files("regions"))
    attrs = tables.attribute_count(cat)
    return f"{images} images in {shards} shards, {attrs} attributes, model {cat.model}"


@command(cli, "verify")
@click.option("--repair", is_flag=True, help="Rebuild what can be rebuilt without re-encoding (Faiss indexes and "
              "sidecars, views, shard records, templates moved out of attributes) and move damaged shards to "
              "STORE/quarantine/ (never deleted).")
@click.option("--reencode", is_flag=True, help="With --repair: also encode attributes that have no embedding or a "
              "damaged one, with the store's model (or --model/--pretrained).")
@click.option("--quick", is_flag=True, help="Only the checks every stage runs before it starts (milliseconds).")
@format_option()
@model_options
@store_option
def verify_cmd(repair, reencode, quick, fmt, model_name, pretrained, device, store):
    """Check that the store is whole: one line per problem, exit status 1 if any.

    \b
    pipeline verify                      # every check (reads every shard once)
    pipeline verify --quick              # what every stage checks before it runs
    pipeline verify --repair             # rebuild indexes/records/views, quarantine damaged shards
    pipeline verify --repair --reencode  # also encode attributes left without an embedding

    Checks: schema version; every shard readable and matching its record (size, sha256, rows);
    ids consistent across Parquet, Faiss and DuckDB; embeddings finite and normalised; every
    attribute embedded; one class prototype per class with attributes; one model fingerprint;
    template prompts apart from attributes and prototypes. docs/store.md lists each check.
    """
    # heavy: imported on use
    from stores import verify as v

    if reencode and not repair:
        raise click.UsageError("--reencode goes with --repair.")
    root = resolve_store_path(store)
    if not (root / CATALOG_FILE).exists():
        raise StoreError(f"No store at {root} (no {CATALOG_FILE}); point --store / ZSL_STORE at a store.")
    if not repair:
        try:
            with open_store(root, read_only=True, create=False) as cat:
                try:
                    problems = v.verify(cat, quick=quick)
                    summary = _summary(cat)
                except duckdb.Error as exc:  # a block of the catalog failed its checksum mid-check
                    problems = v.catalog_blocks(cat) or [v.Problem(
                        "catalog-checksum", CATALOG_FILE, " ".join(str(exc).split())[:200], "catalog", repairable=True)]
                    summary = ""
        except StoreVersionError as exc:
            problems = [v.Problem("schema", CATALOG_FILE, " ".join(str(exc).split()), "schema", repairable=True)]
            summary = ""
        except StoreError as exc:
            if is_lock_conflict(str(exc)) or "being written by" in str(exc):
                raise
            if "checksum" in str(exc):  # a damaged block: --repair rebuilds the catalog from the rest
                problems = v.catalog_file_blocks(root / CATALOG_FILE) or [v.Problem(
                    "catalog-checksum", CATALOG_FILE, " ".join(str(exc).split()), "catalog", repairable=True)]
            else:
                problems = [v.Problem("catalog", CATALOG_FILE, " ".join(str(exc).split()), "catalog",
                                      hint="not repairable: restore catalog.duckdb from a backup")]
            summary = ""
        _print([p.record() for p in problems], fmt)
        if problems:
            n_fix = sum(p.repairable for p in problems)
            click.echo(f"{len(problems)} problem{'s' if len(problems) != 1 else ''} in {root}"
                       + (f"; `pipeline verify --repair` fixes {n_fix}" if n_fix else ""), err=True)
            sys.exit(1)
        click.echo(f"store OK: {summary}", err=True)
        return

    records: list[dict] = [dict(check=c, where=w, problem=a, repair="done")
                           for c, w, a in v.repair_catalog(root, _wait(), _say_waiting)]
    with open_store(root, create=False) as cat:  # migrates and settles interrupted writes first
        rec = cat.recovery
        if rec:
            for what, items in (("published (a committed write whose rename was interrupted)", rec.published),
                                ("removed (an uncommitted staged file)", rec.removed_tmp),
                                ("removed (superseded by a committed rewrite)", rec.removed_retired),
                                ("removed (an interrupted write without records)", rec.removed_orphans)):
                records += [dict(check="interrupted-write", where=w, problem=what, repair="done") for w in items]
        problems = v.verify(cat)
        report = v.repair(cat, problems, reencode=reencode)
        records += [dict(check=c, where=w, problem=a, repair="done") for c, w, a in report.actions]
        if reencode and report.reencode_needed:
            # heavy: imported on use
            from ..stages.attributes import encode_attributes

            model = load_store_model(cat, model_name, pretrained, device)
            n = encode_attributes(cat, model, progress=show_progress())
            records.append(dict(check="attributes-unencoded", where="attribute_embeddings",
                                problem=f"encoded {n} attributes with {model.fingerprint}; rebuilt the attribute indexes",
                                repair="done"))
        remaining = v.verify(cat)
        summary = _summary(cat)
    records += [p.record() for p in remaining]
    _print(records, fmt)
    if remaining:
        click.echo(f"{len(remaining)} problem{'s' if len(remaining) != 1 else ''} remain in {root}", err=True)
        sys.exit(1)
    click.echo(f"store OK: {summary}", err=True)


@command(cli, "remove-images")
@click.option("--path", "paths", multiple=True, help="An indexed image's path, or a folder: every image under it. Repeatable.")
@click.option("--image-id", "image_ids", type=click.IntRange(0, 2**63 - 1), multiple=True, help="An image_id. Repeatable.")
@click.option("--label", "labels", multiple=True, help="Every image with this label. Repeatable.")
@click.option("--index-run", "index_runs", type=click.IntRange(0, 2**63 - 1), multiple=True,
              help="Every image an index run added (index_runs.index_run_id). Repeatable.")
@click.option("--yes", is_flag=True, help="Remove them. Without it, only print what would be removed.")
@limit_option("Images listed.", default=20)
@format_option()
@store_option
def remove_images_cmd(paths, image_ids, labels, index_runs, yes, limit, fmt, store):
    """Take images out of the store: their regions, their results, their place in Faiss.

    \b
    pipeline remove-images --label cat                    # prints what would go
    pipeline remove-images --label cat --yes              # removes it
    pipeline remove-images --path photos/blurry/ --yes    # every image under a folder
    pipeline remove-images --index-run 3 --yes            # undo an index run

    The shard pairs holding them are rewritten without them (the old pair is removed only after
    the new one is committed); their rows in predictions, alignments, sample_predictions and the
    faithfulness tables are dropped in the same transaction; faiss/images.index is rebuilt.
    """
    # heavy: imported on use
    from stores.removal import plan_removal, remove_images

    if not (paths or image_ids or labels or index_runs):
        raise click.UsageError("Say which images: --path, --image-id, --label or --index-run.")
    with open_store(store, read_only=not yes, create=False, check="remove-images") as cat:
        plan = plan_removal(cat, paths=paths, image_ids=image_ids, labels=labels, index_runs=index_runs)
        for u in plan.unmatched:
            click.echo(f"note: {u} matches no indexed image", err=True)
        rows = sorted(plan.images, key=lambda r: r["path"])
        shown = rows[:limit] if limit else rows
        if shown:
            emit(format_records(shown, fmt, ["image_id", "path", "label", "index_run_id", "shard"]))
        results = ", ".join(f"{n} {t}" for t, n in plan.results.items() if n) or "no result rows"
        what = f"{len(plan)} images from {len(plan.shards)} shard pairs, and {results}"
        if not yes:
            click.echo(f"would remove {what} (nothing removed: pass --yes to remove them)" if len(plan)
                       else "no indexed image matches; nothing to remove", err=True)
            return
        report = remove_images(cat, plan)
    click.echo(f"removed {report.images} images ({report.regions} regions) from {len(report.pairs_rewritten)} shard "
               f"pairs, and {', '.join(f'{n} {t}' for t, n in report.results.items() if n) or 'no result rows'}; "
               "faiss/images.index rebuilt", err=True)
