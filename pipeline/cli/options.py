"""Options shared by every command, so the same option means the same thing everywhere.

* ``--store`` (env ``ZSL_STORE``), ``--model``/``--pretrained``/``--device``;
* ``--method`` (repeatable and comma-separated), ``--preset`` (a choice of ``pipeline presets``);
* ``-o/--output`` (its help says whether a file or a folder is written), ``--limit`` (row caps),
  ``--format table|csv|json|jsonl`` for what a command prints;
* ``-q/--quiet`` (alias ``--no-progress``) on the root group and on every command; progress
  bars also stay off when stderr is not a terminal or ``TQDM_DISABLE`` is set;
* numbers are checked at the edge: NaN, infinities and out-of-range values are refused with
  one line that names the option and its range; method and region settings take their help
  and bounds from :mod:`pipeline.config`, the one place they are defined.
"""
from __future__ import annotations

import functools
import os
import sys
from contextlib import contextmanager
from dataclasses import fields
from pathlib import Path

import click
import duckdb

from stores.catalog import Catalog, resolve_store_path
from stores.errors import StoreError
from stores.locks import DEFAULT_WAIT

from ..config import RegionConfig, number_problem, preset_names, range_text
from ..engines.ray_engine import require_ray
from ..errors import InputError
from ..inputs import human_bytes, parse_byte_size
from ..models import ModelLoadError, load_model
from ..stages.methods import method_names, option_fields

FORMATS = ("table", "csv", "json", "jsonl")


# ---- numbers ----------------------------------------------------------------------------
class Number(click.ParamType):
    """An int or float within bounds; NaN and infinities refused (``click.FLOAT`` accepts them)."""

    def __init__(self, kind: type = float, lo=None, hi=None, lo_open: bool = False):
        self.kind, self.lo, self.hi, self.lo_open = kind, lo, hi, lo_open
        self.name = "integer" if kind is int else "number"

    def get_metavar(self, param, ctx=None):  # click >= 8.2 passes ctx
        return "INTEGER" if self.kind is int else "FLOAT"

    def range_text(self) -> str:
        return range_text(self.lo, self.hi, self.lo_open)

    def convert(self, value, param, ctx):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            v = value
        else:
            text = str(value).strip()
            try:
                v = int(text) if self.kind is int else float(text)
            except ValueError:
                self.fail(f"{value!r} is not {'an integer' if self.kind is int else 'a number'}"
                          + (f" ({self.range_text()})" if self.range_text() else ""), param, ctx)
        problem = number_problem(v, self.lo, self.hi, self.lo_open)  # the configs' validator: one wording
        if problem is not None:
            self.fail(problem, param, ctx)
        return v


def number_option(*decls, kind: type = float, lo=None, hi=None, lo_open: bool = False, **kw):
    return click.option(*decls, type=Number(kind, lo, hi, lo_open), **kw)


class ByteSize(Number):
    """A size in bytes: ``256M``, ``4G``, ``1.5GiB`` or a plain integer (binary units)."""

    def __init__(self, lo: int = 1, hi: int = 2**50):
        super().__init__(int, lo, hi)
        self.name = "size"

    def get_metavar(self, param, ctx=None):
        return "SIZE"

    def convert(self, value, param, ctx):
        if isinstance(value, str) and not value.strip().lstrip("-").isdigit():
            n = parse_byte_size(value)
            if n is None:
                self.fail(f"{value!r} is not a size (e.g. 512M, 4G, or a number of bytes)", param, ctx)
            value = n
        return super().convert(value, param, ctx)


def byte_size_option(flag: str, default: int, help: str):
    return click.option(flag, type=ByteSize(), default=default, show_default=human_bytes(default).replace(".0 ", " "),
                        help=help + " Units K, M, G (binary) or bytes.")


RUN_ID = Number(int, 1, 2**63 - 1)  # run ids start at 1


class IntList(click.ParamType):
    """Comma-separated integers, e.g. ``-1,-2`` -> (-1, -2)."""

    name = "ints"

    def get_metavar(self, param, ctx=None):
        return "I[,I...]"

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        parts = [p.strip() for p in str(value).split(",")]
        try:
            return tuple(int(p) for p in parts if p)
        except ValueError:
            self.fail(f"{value!r} is not a comma-separated list of integers (e.g. -1,-2)", param, ctx)


def config_option(config_cls, name: str, *extra_decls: str):
    """An option for one field of a frozen config (:func:`field_option`)."""
    return field_option(next(f for f in fields(config_cls) if f.name == name), *extra_decls)


def field_option(f, *extra_decls: str):
    """An option for one config field: its flag, help, type and bounds come from the field's
    metadata. The default is None ("not given"), so the config's resolution can tell an
    explicit value from the default; the help shows the config's default."""
    name, meta = f.name, f.metadata
    flag = meta.get("option") or "--" + name.replace("_", "-")
    decls = (flag, *extra_decls, name)
    shown = f.default if not isinstance(f.default, float) or f.default == round(f.default, 6) else round(f.default, 4)
    common = dict(default=None, help=f"{meta['help']}  [default: {shown}]")
    if meta.get("choices"):
        return click.option(*decls, type=click.Choice(meta["choices"]), **common)
    if isinstance(f.default, tuple) and all(isinstance(v, int) for v in f.default):
        return click.option(*decls, type=IntList(), **common)
    if isinstance(f.default, bool):  # a flag: given (True) or not given (None)
        return click.option(*decls, is_flag=True, default=None, help=meta["help"],
                            callback=lambda ctx, param, value: True if value else None)
    if meta.get("lo") is None and meta.get("hi") is None:
        return click.option(*decls, **common)
    kind = int if isinstance(f.default, int) else float
    return click.option(*decls, type=Number(kind, meta.get("lo"), meta.get("hi"), meta.get("lo_open")), **common)


def stack(*decorators):
    """Apply option decorators in the order they are listed (top to bottom in --help)."""
    def wrap(fn):
        for d in reversed(decorators):
            fn = d(fn)
        return fn
    return wrap


REGION_CONFIG_FIELDS = ("source", "n_crops", "crop_min", "crop_max", "crop_sides", "seed", "n_parts", "part_min", "part_max",
                        "n_views", "dense",
                        "layers")


def method_option_fields() -> list:
    """The settings of the registered methods' configs that are command-line options."""
    return [f for f in option_fields().values() if f.metadata.get("cli", True)]


def method_config_options(fn):
    """Every method setting a user may set on the command line (None = not given), from the
    registered methods' configs: the options and docs/cli.md come from one source."""
    return stack(*(field_option(f) for f in method_option_fields()))(fn)


def method_settings(values: dict) -> dict:
    """The method settings among a command's parameters (None = not given)."""
    return {f.name: values.get(f.name) for f in method_option_fields()}


def region_config_options(fn):
    return stack(*(config_option(RegionConfig, n) for n in REGION_CONFIG_FIELDS))(fn)


# ---- common options ---------------------------------------------------------------------
def _set_quiet(ctx, param, value):
    if value:
        ctx.meta["zsl_quiet"] = True
    return value


def quiet_option(fn):
    return click.option("-q", "--quiet", "--no-progress", is_flag=True, expose_value=False, is_eager=True,
                        callback=_set_quiet, help="No progress bars (also off when stderr is not a terminal or "
                        "TQDM_DISABLE is set).")(fn)


def show_progress() -> bool:
    """Progress bars only for a person watching: not --quiet, stderr a terminal, no TQDM_DISABLE."""
    ctx = click.get_current_context(silent=True)
    if ctx is not None and ctx.meta.get("zsl_quiet"):
        return False
    if os.environ.get("TQDM_DISABLE", "").strip().lower() not in ("", "0", "false", "no"):
        return False
    return sys.stderr.isatty()


def _set_wait(ctx, param, value):
    if value is not None:
        ctx.meta["zsl_wait"] = value
    return value


def store_option(fn):
    """``--store`` and ``--wait`` (how long to wait while another process writes the store)."""
    fn = click.option(
        "--wait", type=Number(float, 0, 7 * 24 * 3600), default=None, expose_value=False, callback=_set_wait,
        metavar="SECONDS",
        help="Seconds to wait while another pipeline process writes the store (one writes at a time; readers "
             f"never wait for it).  [default: {DEFAULT_WAIT:g}]",
    )(fn)
    return click.option(
        "--store", "store", envvar="ZSL_STORE", default=None,
        help="Store folder (catalog.duckdb + Parquet shards + Faiss indexes).  [default: ./zsl-store, or env ZSL_STORE]",
    )(fn)


def model_options(fn):
    return stack(
        click.option("--model", "model_name", default=None,
                     help="open_clip model name (default: the store's model, else implied by --pretrained, else ViT-B-32)."),
        click.option("--pretrained", default=None,
                     help="open_clip tag (openai), weights file, local-dir:DIR, hf-hub:ORG/REPO, random[:SEED], or a "
                          "shipped tag (toy-clip, which implies --model zsl-tiny). Default: the store's model, else openai."),
        click.option("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if available)."),
    )(fn)


def method_option(default: tuple[str, ...] | None = ("lazsl",), help_extra: str = ""):
    return click.option("--method", "methods", multiple=True, default=default, show_default=bool(default),
                        help=f"{', '.join(method_names())}; repeat or comma-separate for several.{help_extra}")


def parse_methods(values) -> list[str]:
    names = [m.strip() for v in values or () for m in str(v).split(",") if m.strip()]
    unknown = [m for m in names if m not in method_names()]
    if unknown:
        raise click.BadParameter(f"unknown method {unknown[0]!r}; use {', '.join(method_names())}", param_hint="--method")
    return list(dict.fromkeys(names))


def preset_option(fn):
    return click.option("--preset", type=click.Choice(preset_names()), default=None, metavar="NAME",
                        help="Named settings, e.g. cub-b32 (`pipeline presets` lists them): LaZSL's published "
                             "per-dataset values.")(fn)


def engine_options(*, gpu: bool = True):
    """``--engine local|ray`` and the Ray settings (``--address``, ``--ray-concurrency`` and, for
    stages that encode images, ``--actors-per-gpu``): docs/scale.md."""
    opts = [
        click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
                     help="Where the work runs: in this process, or on a Ray cluster (pip install 'zsl-pipeline[ray]')."),
        click.option("--address", default=None, metavar="ADDRESS",
                     help="--engine ray: the cluster to join (auto = the running one; default: start a local one)."),
        number_option("--ray-concurrency", kind=int, lo=1, hi=100_000, default=None,
                      help="--engine ray: actors in the pool (default: one per GPU, else one per CPU but one)."),
    ]
    if gpu:
        opts.append(number_option("--actors-per-gpu", kind=int, lo=1, hi=64, default=1, show_default=True,
                                  help="--engine ray: model copies sharing one GPU (each decodes its own images)."))
    return stack(*opts)


def check_engine(engine: str, address: str | None, **ray_settings) -> None:
    """Ray settings without ``--engine ray`` are a usage error; ``--engine ray`` without Ray installed
    is one line saying how to install it (before the store is opened)."""
    if engine != "ray":
        given = [f"--{k.replace('_', '-')}" for k, v in {"address": address, **ray_settings}.items() if v is not None]
        if given:
            raise click.UsageError(f"{', '.join(given)} need --engine ray")
        return

    require_ray()


def format_option(default: str = "table"):
    return click.option("--format", "fmt", type=click.Choice(FORMATS), default=default, show_default=True,
                        help="How results are printed: an aligned table, CSV, a JSON array, or JSON lines.")


def output_option(kind: str, help: str, default: str | None = None, required: bool = False):
    """``-o/--output``; ``kind`` is "file" or "folder" and is stated in the help."""
    return click.option("-o", "--output", "output", default=default, required=required, show_default=bool(default),
                        type=click.Path(dir_okay=(kind == "folder"), file_okay=(kind == "file")),
                        help=f"{kind.capitalize()} to write: {help}")


def limit_option(help: str, default: int | None = None):
    """``--limit``: how many rows a command shows (prints, lists, puts on a page), never how much
    work it does: a cap on the images a command works through is :func:`max_images_option`."""
    return number_option("--limit", kind=int, lo=0, hi=2**31 - 1, default=default, show_default=default is not None,
                         help=help[:-1] + (" (0 = all)." if default is not None else "."))


def max_images_option(help: str, default: int | None = None):
    """``--max-images``: the cap on how many images a command works through (``--limit`` is rows shown)."""
    return number_option("--max-images", "max_images", kind=int, lo=0, hi=2**31 - 1, default=default,
                         show_default=default is not None, help=help[:-1] + (" (0 = all)." if default is not None else "."))


# ---- errors, stores, models -------------------------------------------------------------
def friendly_errors(fn):
    """Turn the errors a user can fix into one-line messages (exit status 1, no traceback)."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (InputError, StoreError, ModelLoadError) as exc:
            raise click.ClickException(" ".join(str(exc).split())) from None
        except OSError as exc:  # a full disk, a permission, a path that vanished: what and where
            where = " ".join(str(f) for f in (exc.filename, exc.filename2) if f)
            raise click.ClickException(f"{exc.strerror or exc}" + (f": {where}" if where else "")) from None
        except Exception as exc:
            damaged = store_damage_message(exc)
            if damaged is None:
                raise
            raise click.ClickException(damaged) from None

    return wrapper


def store_damage_message(exc: BaseException) -> str | None:
    """One line for an error that comes from a damaged store file (a shard DuckDB could not
    read mid-query, a Faiss file); None for anything else (a bug keeps its traceback)."""
    text = " ".join(str(exc).split())
    if isinstance(exc, duckdb.Error) and (".parquet" in text or "Parquet" in text):
        return f"A store file cannot be read: {text[:300]}; run `pipeline verify`."
    if isinstance(exc, duckdb.Error):  # a damaged catalog block, a file cut short: never a traceback (issue 21)
        return f"The store's catalog cannot be read: {text[:300]}; run `pipeline verify` (--repair rebuilds it)."
    return None


def command(group, name: str):
    """``group.command(name)`` with the options every command shares (--quiet, listed last) and
    one-line errors."""
    def wrap(fn):
        fn = friendly_errors(fn)
        params = getattr(fn, "__click_params__", [])
        quiet_option(fn)  # appends --quiet; click lists params in reverse, so move it to the front
        params.insert(0, params.pop())
        return group.command(name)(fn)
    return wrap


def _say_waiting(message: str) -> None:
    click.echo(f"note: {message}", err=True)


@contextmanager
def open_store(store, *, read_only: bool = False, create: bool = True, check: str | None = None, **catalog_options):
    """Open the store; if this command created it and fails before writing anything, remove it
    (a failed command leaves no empty store behind). Ctrl-C keeps (publishes) whatever was written.
    ``--wait`` (from the command line) bounds the wait for another writer.

    ``check`` names the stage about to run: the store's quick check (``stores.verify``) must
    find no problem that stage cannot live with, or the command stops with one line naming
    ``pipeline verify``."""
    ctx = click.get_current_context(silent=True)
    wait = ctx.meta.get("zsl_wait", DEFAULT_WAIT) if ctx is not None else DEFAULT_WAIT
    root = resolve_store_path(store)
    existed = root.exists()
    if existed and not root.is_dir():
        raise InputError(f"--store {root} is a file; a store is a folder (catalog.duckdb, Parquet shards, Faiss indexes).")
    if not existed and create and not read_only and not root.parent.is_dir():
        raise InputError(f"--store {root}: the folder {root.parent} does not exist; create it first "
                         "(a store's parent folders are never created for you).")
    cat = Catalog(root, read_only=read_only, create=create, wait=wait, on_wait=_say_waiting, **catalog_options)
    try:
        if check is not None:
            # heavy: imported on use
            from stores.verify import require_usable

            require_usable(cat, check)
        yield cat
    except Exception:
        empty = not existed and cat.is_empty()
        if empty:
            cat.destroy()
        else:
            cat.close()
        raise
    except BaseException:  # Ctrl-C: what was committed is kept and published
        cat.close()
        raise
    else:
        cat.close()


def load_store_model(cat: Catalog, model_name, pretrained, device, required: bool = True):
    """The model the user named, or the one the store was built with (None if not required
    and neither is known)."""
    rec = cat.model_record()
    if model_name is None and pretrained is None and rec:
        model_name, pretrained = rec["name"], rec["pretrained"]
    if not required and model_name is None and pretrained is None:
        return None
    model = load_model(model_name, pretrained or "openai", device=device)
    cat.check_model(model.fingerprint)
    return model


def check_output_file(path: str | None) -> Path | None:
    """A file the command will write: its folder must exist and it must not be a folder."""
    if path is None:
        return None
    p = Path(path)
    if p.is_dir():
        raise InputError(f"-o {p} is a folder; give a file name.")
    if not p.parent.is_dir():
        raise InputError(f"-o {p}: the folder {p.parent} does not exist; create it first or write elsewhere.")
    return p


def check_output_folder(path: str) -> Path:
    """A folder the command will write into: created if missing, but never its parents."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise InputError(f"-o {p} is a file; give a folder.")
    if not p.parent.is_dir():
        raise InputError(f"-o {p}: the folder {p.parent} does not exist; create it first or write elsewhere.")
    return p
