"""``sql``, ``catalog status|migrate`` and ``presets``."""
from __future__ import annotations

import click

from stores.catalog import resolve_store_path
from stores.descriptions import catalog_listing, table_columns
from stores.sandbox import tables_read

from ..config import list_presets
from ..errors import InputError
from ..sql import check_output_outside, parse_allow_read, run_sql
from .group import cli
from .options import (
    byte_size_option,
    check_output_file,
    command,
    format_option,
    limit_option,
    number_option,
    open_store,
    output_option,
    store_option,
)
from .output import emit, format_records, format_rows


@command(cli, "sql")
@click.argument("query", required=False)
@click.option("--tables", "list_tables", is_flag=True, help="List every table and view with its description, not a query.")
@click.option("--describe", "describe_name", metavar="NAME", default=None,
              help="The columns of table or view NAME with their types and descriptions, not a query.")
@click.option("-p", "--param", "params", type=(str, str), multiple=True, help="Named parameter: -p name value ($name in SQL).")
@click.option("--allow-read", "allow_read", multiple=True, metavar="[NAME=]FILE",
              help="Make a CSV/TSV/Parquet/JSON file of yours readable, as the view NAME (default: the file name "
                   "without its suffix: labels.csv -> labels). Repeatable; never makes anything writable.")
@limit_option("Rows printed at most.", default=0)
@number_option("--timeout", lo=0, lo_open=True, hi=7 * 24 * 3600, default=60.0, show_default=True,
               help="Seconds the query may run; it is stopped after that.")
@byte_size_option("--memory-limit", 2 << 30, "Memory DuckDB may use for the query (beyond it, it spills to a "
                  "private temporary folder or fails).")
@click.option("--allow-partial", is_flag=True, help="Answer even when shards are missing or damaged (the answer "
              "then leaves their rows out); without it such a store is refused, as the stages refuse it.")
@format_option()
@output_option("file", "the formatted rows instead of printing them (never inside the store).")
@store_option
def sql_cmd(query, list_tables, describe_name, params, allow_read, limit, timeout, memory_limit, allow_partial, fmt,
            output, store):
    """Run one read-only SQL statement on the store.

    \b
    pipeline sql "select method, count(*) from runs join predictions using (run_id) group by method"
    pipeline sql "select * from images where label = \\$l" -p l cat --format csv
    pipeline sql "select i.path, l.truth from images i join labels l using (path)" --allow-read labels.csv
    pipeline sql --tables                  # every table and view, described
    pipeline sql --describe contrasts      # its columns, described

    Every table and view of the store can be read; nothing can be written (no COPY, ATTACH,
    EXPORT, INSTALL/LOAD or SET) and no other file read unless named with --allow-read.
    A writer running meanwhile is not disturbed: this reads the last state it published.
    """
    out = check_output_file(output)
    check_output_outside(out, resolve_store_path(store))
    if list_tables or describe_name:
        return _catalog_listing(list_tables, describe_name, query, fmt, out, store)
    if not query:
        raise click.UsageError("Give a QUERY, or --tables / --describe NAME to see what there is to query.")
    allowed = parse_allow_read(allow_read)
    with open_store(store, read_only=True, sandbox=True, allow_read=allowed, memory_limit=f"{memory_limit}B") as cat:
        if not allow_partial:
            _require_whole_shards(cat, query)
        cols, rows = run_sql(cat, query, dict(params), limit=limit or None, timeout=timeout)
    emit(format_rows(cols, rows, fmt), out)


def _require_whole_shards(cat, query: str) -> None:
    """A query that reads the shard views (directly or through a view) on a store with a missing or
    damaged shard is refused: its answer would silently leave rows out."""
    read = tables_read(cat.con, query)
    if read is not None and not read & {"images", "regions"}:
        return
    # heavy: imported on use (verify reads shards and Faiss files: numpy, pyarrow, faiss)
    from stores.verify import shard_damage

    damage = shard_damage(cat)
    names = [str(p) for p in cat.unreadable_shards]
    if damage or names:
        first = damage[0].line() if damage else f"shard-unreadable: {names[0]}"
        n = len(damage) + len(names)
        raise InputError(f"the store has {n} missing or damaged shard{'s' if n > 1 else ''} ({first}); an answer would "
                         f"leave their rows out. Run `pipeline verify --store {cat.root}`, or pass --allow-partial "
                         "to query what is left.")


def _catalog_listing(list_tables, describe_name, query, fmt, out, store) -> None:
    if query or (list_tables and describe_name):
        raise click.UsageError("--tables and --describe list the catalog; give them alone, without a QUERY.")
    with open_store(store, read_only=True) as cat:
        if list_tables:
            rows = catalog_listing(cat.con)
            cols = ["name", "kind", "columns", "description"]
        else:
            rows = table_columns(cat.con, describe_name)
            if rows is None:
                raise click.UsageError(f"No table or view {describe_name!r}; `pipeline sql --tables` lists them.")
            cols = ["column", "type", "description"]
    emit(format_rows(cols, [[r[c] for c in cols] for r in rows], fmt, max_width=400), out)


@cli.group("catalog")
def catalog_group():
    """Inspect and migrate the store."""


@command(catalog_group, "status")
@format_option()
@store_option
def catalog_status(fmt, store):
    """Paths, model, schema version and row counts."""
    with open_store(store, read_only=True) as cat:
        counts = cat.table_counts()
        info = dict(store=str(cat.root), model=cat.model, schema_version=cat.get_meta("schema_version"))
    if fmt == "table":
        for k, v in info.items():
            click.echo(f"{k}: {v}")
        for name, n in counts.items():
            click.echo(f"  {name:24s} {n:>10d}")
        return
    emit(format_records([dict(info, table=t, rows=n) for t, n in counts.items()], fmt))


@command(catalog_group, "migrate")
@store_option
def catalog_migrate(store):
    """Bring an older store's schema up to date."""
    with open_store(resolve_store_path(store), create=False) as cat:
        click.echo(f"{cat.root}: schema version {cat.get_meta('schema_version')}")


@command(cli, "presets")
@format_option()
def presets_cmd(fmt):
    """The named settings --preset accepts (pipeline/presets/*.json).

    \b
    pipeline presets
    pipeline index-images photos/ --preset cub-b32 && pipeline classify   # θ 0.95 from the preset
    """
    rows = [dict(name=p.name, model=p.model, **{f"regions.{k}": v for k, v in p.regions.items()},
                 **{f"method.{k}": v for k, v in p.method.items()}, description=p.description) for p in list_presets()]
    cols = ["name", "model", "regions.source", "regions.n_crops", "regions.crop_min", "regions.n_parts",
            "regions.n_views", "method.theta", "method.top_k", "description"]
    emit(format_rows(cols, [[r.get(c) for c in cols] for r in rows], fmt, max_width=400))  # descriptions whole, never cut mid-word
