"""Is the store whole? Checks that return one :class:`Problem` per thing wrong, and repairs.

:func:`verify` checks everything that can be checked without a model: the schema version;
every shard against its record (present, size, sha256, rows) and readable, with its partner;
ids consistent across the Parquet shards, the Faiss indexes and DuckDB (no duplicate image or
region, every region's image in its pair, every image with its full view); embeddings finite,
L2-normalised and of the store's dimension; every attribute embedded; one class prototype per
class with attributes, equal to the normalised mean of its prototype attributes
(``stores.indexes``); one model fingerprint everywhere (``store_model``, embeddings, the
regions' ``model`` column, the Faiss sidecars); class prompts (templates) apart from user
attributes and prototypes; the views present.

:func:`quick_check` is the part that costs milliseconds (records, file sizes and Parquet magic
bytes, SQL counts, sidecar digests): :func:`require_usable` runs it at the start of every stage
and refuses, in one line naming ``pipeline verify``, to work on a store with a known problem.

:func:`repair` rebuilds what can be rebuilt without re-encoding (Faiss indexes and sidecars,
views, shard records, templates moved back to ``class_prompts``, embeddings of another model
dropped) and moves damaged shards to ``STORE/quarantine/`` (never deletes them); missing or
damaged attribute embeddings are re-encoded only when the caller asks (``--reencode``).
"""
from __future__ import annotations

import os
import shutil
import warnings
from datetime import datetime
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import numpy as np
import pyarrow.parquet as pq

from . import files, indexes, tables
from .catalog import CATALOG_FILE, WORKING_FILE, Catalog
from .catalog_check import rebuild_catalog, scan_catalog
from .errors import StoreError
from .faiss_index import ids_digest, index_ids, index_vectors, is_flat, read_index, read_sidecar
from .locks import WriterLock, fsync_dir
from .migrations import MIGRATIONS, SCHEMA_VERSION
from .parquet import embeddings_to_numpy, has_magic, parquet_problem
from .shards import PAIR_TABLES, describe_file, legacy_shards, run_id_of

NORM_TOL = 1e-2  # |‖e‖ - 1| allowed: float16 storage rounds each component to ~5e-4
VECTOR_TOL = 1e-4  # index vectors against the tables they were built from
EXPLANATION_VIEWS = ("contributions", "top_attributes", "class_confusions", "attribute_usage")
IMAGE_COLUMNS = ("image_id", "path", "sha256", "label", "index_run_id")
REGION_COLUMNS = ("region_id", "image_id", "kind", "model", "embedding")
QUARANTINE = "quarantine"
TEMPLATE_ROWS = "starts_with(source, 'template:') OR style IS NULL OR style NOT IN ('descriptors', 'sentences')"

# what a shard check says about its pair: damage means the pair leaves the live set on --repair
PAIR_DAMAGE = {"shard-missing", "shard-unreadable", "shard-size", "shard-checksum", "shard-rows", "shard-schema",
               "shard-partner", "orphan-regions", "missing-full-view", "embedding-nan", "embedding-norm",
               "embedding-dim", "duplicate-ids"}


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a store, said in one line.

    ``check`` names the test (docs/store.md lists them), ``where`` the file or table (paths
    relative to the store), ``scope`` what it belongs to (``schema``, ``shards``,
    ``attributes``, ``images-index``, ``catalog``), ``repairable`` whether
    ``pipeline verify --repair`` fixes it without re-encoding, ``hint`` what to do otherwise.
    """

    check: str
    where: str
    message: str
    scope: str
    repairable: bool = False
    hint: str = ""

    def line(self) -> str:
        tail = " (--repair fixes it)" if self.repairable else (f" ({self.hint})" if self.hint else "")
        return f"{self.check}: {self.where}: {self.message}{tail}"

    def record(self) -> dict:
        return dict(check=self.check, where=self.where, problem=self.message,
                    repair="--repair" if self.repairable else (self.hint or "none"))


def _rel(cat: Catalog, path: Path) -> str:
    try:
        return str(Path(path).relative_to(cat.root))
    except ValueError:
        return str(path)


def _split(where: str) -> tuple[str, str]:
    table, _, name = where.partition("/")
    return table, name


# ---- schema -----------------------------------------------------------------------------
def _schema(cat: Catalog) -> list[Problem]:
    version = cat.get_meta("schema_version")
    if version != str(SCHEMA_VERSION):
        return [Problem("schema", "catalog.duckdb", f"schema version {version}, this code writes {SCHEMA_VERSION}",
                        "schema", repairable=True)]
    return []


# ---- shards: quick ----------------------------------------------------------------------
def _shard_inventory(cat: Catalog) -> tuple[dict, dict, dict]:
    """(live records, files present, staged tmp files), each keyed by (table, name)."""
    live = tables.shard_records(cat, ("live",))
    present, staged = {}, {}
    for table in PAIR_TABLES:
        for p in cat.shard_files(table):
            present[(table, p.name)] = p
        d = cat.shard_dir(table)
        if d.is_dir():
            for tmp in d.glob("part-*.parquet" + files.TMP_SUFFIX):
                staged[(table, tmp.name.removesuffix(files.TMP_SUFFIX))] = tmp
    return live, present, staged


def _shards_quick(cat: Catalog, live: dict, present: dict, staged: dict, full: bool) -> tuple[list[Problem], set]:
    """Record/file/partner problems; returns them and the (table, name) keys found unreadable."""
    out: list[Problem] = []
    legacy = legacy_shards(cat)
    retired = set(tables.shard_records(cat, ("retired",)))
    bad: set[tuple[str, str]] = set()
    writer_running = None  # asked only when an unrecorded shard turns up
    for key, rec in live.items():
        table, name = key
        if key in present:
            continue
        tmp = staged.get(key)
        if tmp is not None and tmp.stat().st_size == rec["bytes"]:
            out.append(Problem("shard-pending", f"{table}/{name}", "committed but not yet renamed from its .tmp file "
                               "(a writer was killed or is running); the next write-mode command finishes it",
                               "shards", repairable=True))
        else:
            out.append(Problem("shard-missing", f"{table}/{name}", f"recorded ({rec['rows']} rows) but the file is gone",
                               "shards", hint="lost: --repair quarantines its partner; re-run index-images on its images"))
            bad.add(key)
    for key, path in present.items():
        table, name = key
        rec = live.get(key)
        if not has_magic(path) or path in cat.unreadable_shards:
            why = parquet_problem(path) or "cannot be read"
            out.append(Problem("shard-unreadable", f"{table}/{name}", why, "shards", repairable=True))
            bad.add(key)
            continue
        if rec is not None and path.stat().st_size != rec["bytes"]:
            out.append(Problem("shard-size", f"{table}/{name}",
                               f"{path.stat().st_size} bytes, its record says {rec['bytes']} (truncated or replaced)",
                               "shards", repairable=True))
            bad.add(key)
        elif rec is None and key in retired:
            # remove-images committed its rewrite and was stopped before deleting the old file;
            # readers leave it out (not live), the next write-mode command deletes it
            out.append(Problem("shard-retired", f"{table}/{name}", "rewritten by remove-images, not yet deleted "
                               "(a writer was killed); the next write-mode command deletes it", "shards",
                               repairable=True))
        elif rec is None and (full or f"{table}/{name}" not in legacy):
            if writer_running is None:  # or an interrupted one: its working copy holds the record (readers never
                # publish it; the next writer adopts it)
                writer_running = cat.read_only and (not WriterLock(cat.root).is_free() or cat.work_file.exists())
            if writer_running and f"{table}/{name}" not in legacy:
                # a reader sees the last published catalog; the running writer has committed this
                # shard's record in its working copy and publishes it at its next commit point
                out.append(Problem("shard-pending", f"{table}/{name}", "written by the running (or an interrupted) "
                                   "writer, not yet published to readers", "shards", repairable=True))
                continue
            if f"{table}/{name}" in legacy:
                msg = "has no shard record (written before this store kept records)"
            else:
                msg = "has no shard record: not written by this store, or its record was lost"
            out.append(Problem("shard-unrecorded", f"{table}/{name}", msg, "shards", repairable=True))
    # pairs
    kept = {k for k in present if k not in retired}  # a retired file is on its way out: no partner needed
    names = {n for (_, n) in kept} | {n for (_, n) in live}
    for name in sorted(names):
        has = {t: (t, name) in kept or (t, name) in live for t in PAIR_TABLES}
        if has["images"] and not has["regions"]:
            out.append(Problem("shard-partner", f"images/{name}", "has no regions shard: its images have no region "
                               "embeddings (an interrupted or damaged index run)", "shards", repairable=True,
                               hint="re-run index-images on those images afterwards"))
            bad.add(("images", name))
        elif has["regions"] and not has["images"]:
            if ("regions", name) in live:
                out.append(Problem("shard-partner", f"regions/{name}", "has no images shard: its regions belong to no "
                                   "indexed image (the images shard was lost)", "shards", repairable=True))
                bad.add(("regions", name))
            elif ("regions", name) in kept:
                out.append(Problem("interrupted-write", f"regions/{name}", "an unfinished write of a store without "
                                   "records (the next write-mode command removes it)", "shards", repairable=True))
        ri, rr = live.get(("images", name)), live.get(("regions", name))
        if ri and rr and rr["rows"] < ri["rows"]:
            out.append(Problem("shard-rows", f"regions/{name}", f"{rr['rows']} regions for {ri['rows']} images "
                               "(every image has at least its full view)", "shards", repairable=True))
            bad.add(("regions", name))
    if full:
        for key, tmp in staged.items():
            if key not in live:
                out.append(Problem("interrupted-write", _rel(cat, tmp), "a staged file that was never committed (the "
                                   "next write-mode command removes it)", "shards", repairable=True))
    return out, bad


# ---- attributes: quick ------------------------------------------------------------------
def _attributes_quick(cat: Catalog, fp: str | None) -> list[Problem]:
    out = []
    n_attr, n_enc = tables.attribute_embedding_counts(cat, fp or "")
    if n_attr > n_enc:
        out.append(Problem("attributes-unencoded", "attribute_embeddings",
                           f"{n_attr - n_enc} of {n_attr} attributes have no embedding for {fp}"
                           + (" (the store has no model record)" if fp is None else ""), "attributes",
                           hint="run build-attributes again (it encodes what is missing), or --repair --reencode"))
    if fp is None:
        return out
    ids, class_ids = indexes.prototype_attribute_ids(cat, fp)
    want = ids_digest(ids)
    n_classes = len(np.unique(class_ids))
    for which in ("attributes", "class_prototypes"):
        path = indexes.index_path(cat, which)
        where = _rel(cat, path)
        if not path.exists():
            if len(ids):
                out.append(Problem("index-missing", where, f"missing ({len(ids)} encoded attributes)", "attributes",
                                   repairable=True))
            continue
        try:
            side = read_sidecar(path)
        except StoreError:
            out.append(Problem("index-sidecar", _rel(cat, path.with_suffix(".json")), "unreadable sidecar", "attributes",
                               repairable=True))
            continue
        if not side:
            out.append(Problem("index-sidecar", _rel(cat, path.with_suffix(".json")), "missing sidecar", "attributes",
                               repairable=True))
            continue
        if "bytes" in side and side["bytes"] != path.stat().st_size:
            out.append(Problem("index-unreadable", where, f"{path.stat().st_size} bytes, its sidecar says "
                               f"{side['bytes']} (truncated or replaced)", "attributes", repairable=True))
            continue
        if side.get("model") not in (None, fp):
            out.append(Problem("index-sidecar", where, f"built with {side.get('model')}, the store's model is {fp}",
                               "attributes", repairable=True))
        have = side.get("source_ids_sha256")
        stale = (have != want) if have is not None else (
            side.get("ntotal") != (len(ids) if which == "attributes" else n_classes))
        if stale and which == "class_prototypes":
            out.append(Problem("prototypes-stale", where, f"built from other attributes than the {len(ids)} encoded "
                               f"prototype attributes of {n_classes} classes (index: {side.get('source_rows', '?')} "
                               f"attributes, {side.get('ntotal')} classes)", "attributes", repairable=True))
        elif stale:
            out.append(Problem("index-stale", where, f"holds {side.get('ntotal')} attributes, the tables "
                               f"{len(ids)}", "attributes", repairable=True))
    return out


def _templates(cat: Catalog) -> list[Problem]:
    n = cat.con.execute(f"SELECT count(*) FROM attributes WHERE {TEMPLATE_ROWS}").fetchone()[0]
    if n:
        return [Problem("templates-in-attributes", "attributes", f"{n} class-name template prompts are stored as user "
                        "attributes (they belong in class_prompts; methods and prototypes would score them)", "texts", True)]
    return []


def quick_check(cat: Catalog) -> list[Problem]:
    """The checks that cost milliseconds: schema, shard records against files (existence,
    size, Parquet magic bytes, partners), unrecorded shards this store did not write,
    attributes without embeddings, template prompts among attributes, attribute and
    prototype indexes against their sidecars."""
    out = _schema(cat)
    live, present, staged = _shard_inventory(cat)
    out += _shards_quick(cat, live, present, staged, full=False)[0]
    out += _attributes_quick(cat, cat.model)
    out += _templates(cat)
    return out


# scopes a stage may run with: it completes them itself
#: what a reader never refuses on: a running or killed writer's work that the next write-mode
#: command settles (readers see the published catalog, which does not include those files)
READER_IGNORES = ("shard-pending", "shard-retired")
STAGE_TOLERATES = {
    "build-attributes": {"attributes"},
    "index-images": {"images-index"},
    "remove-images": {"attributes", "images-index"},
}


def shard_damage(cat: Catalog) -> list[Problem]:
    """Shards whose rows a query over the views would silently miss: recorded but gone, cut short,
    unreadable, or without their partner (quick checks only; what the stages refuse on too)."""
    live, present, staged = _shard_inventory(cat)
    found = _shards_quick(cat, live, present, staged, full=False)[0]
    return [p for p in found if p.check in PAIR_DAMAGE and p.check not in READER_IGNORES]


#: stages that score region embeddings: every regions shard's bytes are checked against its
#: recorded sha256 before they start (a flipped exponent bit reads fine and changes predictions)
REGION_READERS = ("classify", "evaluate", "explain", "faithfulness")


def region_checksums(cat: Catalog) -> list[Problem]:
    """Every live regions shard hashed and compared with its record (about 1 GB/s of shards)."""
    out = []
    for (table, name), rec in sorted(tables.shard_records(cat, ("live",)).items()):
        path = cat.shard_dir(table) / name
        if table != "regions" or not path.is_file() or path.stat().st_size != rec["bytes"]:
            continue  # missing or cut short: the quick check says so
        if files.file_sha256(path) != rec["sha256"]:
            out.append(Problem("shard-checksum", f"{table}/{name}", "its bytes differ from what was written (sha256 "
                               "mismatch): its embeddings cannot be trusted", "shards", True))
    return out


def require_usable(cat: Catalog, stage: str) -> None:
    """Refuse (StoreError, one line) when the quick check finds a problem ``stage`` cannot live with
    (for stages that read region embeddings, also a regions shard whose checksum does not match)."""
    problems = [p for p in quick_check(cat) if p.scope not in STAGE_TOLERATES.get(stage, set())]
    if not problems and stage in REGION_READERS:
        problems = region_checksums(cat)
    if cat.read_only:  # a reader works on the published state; a running writer's commits are not its problem
        problems = [p for p in problems if p.check not in READER_IGNORES]
    if not problems:
        return
    first = problems[0]
    more = f" and {len(problems) - 1} more" if len(problems) > 1 else ""
    raise StoreError(f"{stage} refused: {first.line()}{more}; run `pipeline verify --store {cat.root}` to see every "
                     "problem and `--repair` to fix what can be rebuilt.")


# ---- full checks ------------------------------------------------------------------------
@dataclass
class _ShardScan:
    image_ids: list = field(default_factory=list)
    region_ids: list = field(default_factory=list)
    crop_ids: list = field(default_factory=list)  # every region but the full views: faiss/regions.index
    image_owner: list = field(default_factory=list)  # (name, n) per images shard, for duplicate reports
    full_ids: list = field(default_factory=list)
    full_vecs: list = field(default_factory=list)
    dim: int | None = None


def _embedding_problems(emb: np.ndarray, where: str, scope: str, what: str, dim: int | None, repairable: bool,
                        hint: str = "") -> list[Problem]:
    out = []
    if len(emb) == 0:
        return out
    finite = np.isfinite(emb).all(axis=1)
    if not finite.all():
        out.append(Problem("embedding-nan", where, f"{int((~finite).sum())} {what} embeddings hold NaN or infinity",
                           scope, repairable, hint))
    norms = np.linalg.norm(np.where(np.isfinite(emb), emb, 0), axis=1)
    off = finite & (np.abs(norms - 1) > NORM_TOL)
    if off.any():
        out.append(Problem("embedding-norm", where, f"{int(off.sum())} {what} embeddings are not L2-normalised (norms "
                           f"{norms[off].min():.3g}..{norms[off].max():.3g})", scope, repairable, hint))
    if dim is not None and emb.shape[1] != dim:
        out.append(Problem("embedding-dim", where, f"{what} embeddings have {emb.shape[1]} dimensions, the store's "
                           f"model {dim}", scope, repairable, hint))
    return out


def _scan_pair(cat: Catalog, name: str, live: dict, present: dict, fp: str | None, scan: _ShardScan) -> list[Problem]:
    """Read one shard pair: checksums, rows, columns, ids, embeddings, model column."""
    out: list[Problem] = []
    data = {}
    for table, cols in (("images", IMAGE_COLUMNS), ("regions", REGION_COLUMNS)):
        path, rec = present.get((table, name)), live.get((table, name))
        where = f"{table}/{name}"
        if path is None:
            return out
        try:
            meta = pq.read_metadata(path)
        except Exception as exc:  # noqa: BLE001  (any failure to read a footer is damage)
            out.append(Problem("shard-unreadable", where, " ".join(str(exc).split()) or "unreadable", "shards", True))
            return out
        if rec is not None:
            if files.file_sha256(path) != rec["sha256"]:
                out.append(Problem("shard-checksum", where, "its bytes differ from what was written (sha256 mismatch)",
                                   "shards", True))
            if meta.num_rows != rec["rows"]:
                out.append(Problem("shard-rows", where, f"{meta.num_rows} rows, its record says {rec['rows']}",
                                   "shards", True))
        missing = [c for c in cols if c not in meta.schema.to_arrow_schema().names]
        if missing:
            out.append(Problem("shard-schema", where, f"lacks column(s) {', '.join(missing)}", "shards", True))
            return out
        try:
            data[table] = pq.read_table(path, columns=list(cols))
        except Exception as exc:  # noqa: BLE001
            out.append(Problem("shard-unreadable", where, " ".join(str(exc).split()) or "unreadable", "shards", True))
            return out
    img, reg = data["images"], data["regions"]
    img_ids = img["image_id"].to_numpy()
    reg_img = reg["image_id"].to_numpy()
    kinds = np.array(reg["kind"].to_pylist(), dtype=object)
    orphan = ~np.isin(reg_img, img_ids)
    if orphan.any():
        out.append(Problem("orphan-regions", f"regions/{name}", f"{int(orphan.sum())} regions of images not in "
                           f"images/{name}", "shards", True))
    full = kinds == "full"
    n_full = np.bincount(np.searchsorted(np.sort(img_ids), reg_img[full & ~orphan]), minlength=len(img_ids))
    if (n_full != 1).any():
        out.append(Problem("missing-full-view", f"regions/{name}", f"{int((n_full == 0).sum())} images without a full "
                           f"view, {int((n_full > 1).sum())} with several", "shards", True))
    emb = embeddings_to_numpy(reg["embedding"])
    if scan.dim is None and emb.ndim == 2 and emb.shape[1]:
        scan.dim = emb.shape[1]
    out += _embedding_problems(emb, f"regions/{name}", "shards", "region", scan.dim, True)
    models = set(reg["model"].unique().to_pylist())
    if fp is not None and models - {fp}:
        out.append(Problem("model-mixed", f"regions/{name}", f"regions encoded by {', '.join(sorted(map(str, models - {fp})))}"
                           f", the store's model is {fp}", "shards",
                           hint="remove those images (remove-images --index-run) and index them again"))
    scan.image_ids.append(img_ids)
    scan.region_ids.append(reg["region_id"].to_numpy())
    scan.crop_ids.append(reg["region_id"].to_numpy()[~full])
    if full.any() and emb.ndim == 2:
        scan.full_ids.append(reg_img[full])
        scan.full_vecs.append(emb[full])
    return out


def _shards_full(cat: Catalog, fp: str | None, dim: int | None) -> tuple[list[Problem], _ShardScan]:
    live, present, staged = _shard_inventory(cat)
    out, bad = _shards_quick(cat, live, present, staged, full=True)
    scan = _ShardScan(dim=dim)
    names = sorted({n for (_, n) in present})
    owners: list[tuple[str, np.ndarray, bool]] = []
    for name in names:
        if ("images", name) in bad or ("regions", name) in bad:
            continue
        before = len(scan.image_ids)
        out += _scan_pair(cat, name, live, present, fp, scan)
        if len(scan.image_ids) > before:
            recorded = ("images", name) in live
            owners.append((name, scan.image_ids[-1], recorded))
    # duplicates across shards: an id in two shards is doubled rows in every query
    if owners:
        all_ids = np.concatenate([o[1] for o in owners])
        uniq, counts = np.unique(all_ids, return_counts=True)
        dup = uniq[counts > 1]
        if len(dup):
            for name, ids, recorded in owners:
                n = int(np.isin(ids, dup).sum())
                if n and not recorded:
                    out.append(Problem("duplicate-ids", f"images/{name}", f"{n} images already in other shards "
                                       "(an unrecorded copy)", "shards", True))
            if any(np.isin(ids, dup).any() and recorded for _, ids, recorded in owners) and not any(
                    p.check == "duplicate-ids" for p in out):
                out.append(Problem("duplicate-ids", "images", f"{len(dup)} image ids in more than one recorded shard",
                                   "shards", hint="remove-images --image-id ID, then index them again"))
    if scan.region_ids:
        rid = np.concatenate(scan.region_ids)
        n_dup = len(rid) - len(np.unique(rid))
        if n_dup and not any(p.check == "duplicate-ids" for p in out):
            out.append(Problem("duplicate-ids", "regions", f"{n_dup} region ids in more than one row", "shards",
                               hint="remove the images concerned (remove-images) and index them again"))
    return out, scan


def _embedding_table(cat: Catalog, table: str, key: str) -> tuple[np.ndarray, list[str], np.ndarray]:
    with warnings.catch_warnings():  # DuckDB warns that DB-API Arrow output copies once; that copy is fine here
        warnings.simplefilter("ignore")
        t = cat.con.execute(f"SELECT {key}, model, embedding FROM {table} ORDER BY {key}").to_arrow_table()
    return t[key].to_numpy(), t["model"].to_pylist(), embeddings_to_numpy(t["embedding"])


def _attributes_full(cat: Catalog, fp: str | None, dim: int | None) -> list[Problem]:
    out: list[Problem] = _templates(cat)
    for table, key, owner, what in (("attribute_embeddings", "attr_id", "attributes", "attribute"),
                                    ("class_prompt_embeddings", "prompt_id", "class_prompts", "class prompt")):
        ids, models, emb = _embedding_table(cat, table, key)
        if len(ids) == 0:
            continue
        other = sorted({m for m in models if m != fp})
        if fp is not None and other:
            n = sum(m != fp for m in models)
            out.append(Problem("model-mixed", table, f"{n} {what} embeddings of {', '.join(other)}, the store's model "
                               f"is {fp}", "attributes", True))
        orphans = cat.con.execute(f"SELECT count(*) FROM {table} e ANTI JOIN {owner} o USING ({key})").fetchone()[0]
        if orphans:
            out.append(Problem("orphan-embeddings", table, f"{orphans} {what} embeddings of no stored {what}",
                               "attributes", True))
        mine = np.array([m == fp for m in models]) if fp is not None else np.ones(len(ids), bool)
        repairable = table == "class_prompt_embeddings"  # classify re-encodes class prompts on demand
        hint = "" if repairable else "--repair --reencode encodes them again"
        out += _embedding_problems(emb[mine], table, "attributes", what, dim, repairable, hint)
    return out


def _index_problems(cat: Catalog, which: str, fp: str | None, want_ids: np.ndarray, want_vecs: np.ndarray | None,
                    scope: str) -> list[Problem]:
    """One Faiss index against the ids (and vectors) the tables give."""
    path = indexes.index_path(cat, which)
    where = _rel(cat, path)
    if not path.exists():
        return [Problem("index-missing", where, f"missing ({len(want_ids)} vectors expected)", scope, True)] if len(want_ids) else []
    out = []
    try:
        side = read_sidecar(path)
    except StoreError:
        side = None
        out.append(Problem("index-sidecar", _rel(cat, path.with_suffix(".json")), "unreadable sidecar", scope, True))
    if side == {}:
        out.append(Problem("index-sidecar", _rel(cat, path.with_suffix(".json")), "missing sidecar", scope, True))
    try:
        index, _ = read_index(path)
        ids = index_ids(index)  # any factory type (stores.faiss_factory); vectors only where exact (Flat)
        vecs = index_vectors(index)[1] if is_flat(index) else None
    except StoreError as exc:
        return out + [Problem("index-unreadable", where, str(exc).split(": ", 1)[-1].removesuffix("; run `pipeline verify`."),
                              scope, True)]
    except Exception as exc:  # noqa: BLE001  (faiss raises RuntimeError/MemoryError on garbage)
        return out + [Problem("index-unreadable", where, " ".join(str(exc).split())[:200] or "unreadable", scope, True)]
    if side:
        wrong = [f"{k} {side.get(k)} (index: {v})" for k, v in (("ntotal", index.ntotal), ("dim", index.d)) if side.get(k) != v]
        if side.get("model") not in (None, fp):
            wrong.append(f"model {side.get('model')} (store: {fp})")
        if side.get("ids_sha256") not in (None, ids_digest(ids)):
            wrong.append("ids digest")
        if wrong:
            out.append(Problem("index-sidecar", _rel(cat, path.with_suffix(".json")), "says " + ", ".join(wrong), scope, True))
    extra = np.setdiff1d(ids, want_ids)
    lacking = np.setdiff1d(want_ids, ids)
    if len(extra) or len(lacking) or len(ids) != len(np.unique(ids)):
        check = "prototypes-stale" if which == "class_prototypes" else "index-stale"
        unit = {"attributes": "attributes", "class_prototypes": "classes", "images": "images", "regions": "regions"}[which]
        out.append(Problem(check, where, f"{len(lacking)} {unit} missing from the index, {len(extra)} in it that the "
                           f"tables do not have" + (", duplicate ids" if len(ids) != len(np.unique(ids)) else ""),
                           scope, True))
    elif want_vecs is not None and vecs is not None and len(ids):
        order = np.argsort(want_ids)
        pos = order[np.searchsorted(want_ids[order], ids)]
        diff = np.abs(vecs - want_vecs[pos]).max() if vecs.shape == want_vecs[pos].shape else np.inf
        if not diff <= VECTOR_TOL:
            what = ("differ from the normalised mean of each class's prototype attributes (templates mixed in, or "
                    "attributes changed)") if which == "class_prototypes" else "differ from the stored embeddings"
            out.append(Problem("index-vectors", where, f"vectors {what} (max |diff| {diff:.3g})", scope, True))
    return out


def _views(cat: Catalog) -> list[Problem]:
    names = {r[0] for r in cat.con.execute("SELECT view_name FROM duckdb_views() WHERE NOT internal").fetchall()}
    missing = [v for v in ("images", "regions", *EXPLANATION_VIEWS) if v not in names]
    return [Problem("views", "catalog.duckdb", f"missing view(s) {', '.join(missing)}", "catalog", True)] if missing else []


def _model_record(cat: Catalog) -> list[Problem]:
    n = cat.con.execute("SELECT count(*) FROM store_model").fetchone()[0]
    if n > 1:
        return [Problem("model-mixed", "store_model", f"{n} model records (a store holds one model)", "catalog",
                        hint="keep one: the others' embeddings cannot be compared")]
    if n == 0:
        used = _fingerprints_used(cat)
        if used:
            return [Problem("store-model", "store_model", f"no model record, but embeddings of {', '.join(sorted(used))}",
                            "catalog", repairable=len(used) == 1)]
    return []


def _fingerprints_used(cat: Catalog) -> set[str]:
    used = {r[0] for r in cat.con.execute(
        "SELECT DISTINCT model FROM attribute_embeddings UNION SELECT DISTINCT model FROM class_prompt_embeddings "
        "UNION SELECT DISTINCT model FROM index_runs").fetchall()}
    return used


def verify(cat: Catalog, *, quick: bool = False) -> list[Problem]:
    """Every problem of the store, one :class:`Problem` each (empty: the store is whole).

    ``quick=True`` runs :func:`quick_check` only. The full check reads every shard once (one
    pair in memory at a time) and every Faiss index."""
    if quick:
        return quick_check(cat)
    rec = cat.model_record() or {}
    fp = rec.get("fingerprint")
    dim = rec.get("embed_dim")
    out = _schema(cat) + _model_record(cat)
    shard_problems, scan = _shards_full(cat, fp, dim)
    out += shard_problems
    out += _attributes_quick(cat, fp)
    out = [p for p in out if p.check not in ("index-missing", "index-sidecar", "index-unreadable", "index-stale",
                                             "prototypes-stale")]  # the full index checks below say it all
    out += _attributes_full(cat, fp, dim or scan.dim)
    if fp is not None:
        attrs = indexes.prototype_attributes(cat, fp)
        out += _index_problems(cat, "attributes", fp, attrs.ids, attrs.embeddings, "attributes")
        classes, proto = indexes.expected_prototypes(attrs)
        out += _index_problems(cat, "class_prototypes", fp, classes, proto, "attributes")
    full_ids = np.concatenate(scan.full_ids) if scan.full_ids else np.zeros(0, np.int64)
    full_vecs = np.concatenate(scan.full_vecs) if scan.full_vecs else None
    damaged = any(p.scope == "shards" and p.check in PAIR_DAMAGE for p in out)
    out += _index_problems(cat, "images", fp, full_ids, None if damaged else full_vecs, "images-index")
    if indexes.index_path(cat, "regions").exists():  # asked for by index-images --faiss-index; ids and counts
        crop_ids = np.concatenate(scan.crop_ids) if scan.crop_ids else np.zeros(0, np.int64)
        out += _index_problems(cat, "regions", fp, crop_ids, None, "images-index")
    out += _views(cat)
    out += catalog_blocks(cat) + working_copies(cat)
    return _dedupe(out)


# ---- the catalog file itself ------------------------------------------------------------------
def catalog_blocks(cat: Catalog) -> list[Problem]:
    """Every data block of the open catalog read (and so checksummed) by DuckDB:
    :func:`stores.catalog_check.scan_catalog`."""
    return [Problem("catalog-checksum", f"catalog.duckdb:{table}", f"cannot be read in full: {message}", "catalog",
                    repairable=True) for table, message in scan_catalog(cat.con)]


def catalog_file_blocks(path: Path) -> list[Problem]:
    """:func:`catalog_blocks` for a catalog file that the store could not be opened on (a damaged
    block met while opening): which tables cannot be read in full."""
    try:
        con = duckdb.connect(str(path), read_only=True)
    except duckdb.Error:
        return []
    try:
        return [Problem("catalog-checksum", f"{path.name}:{table}", f"cannot be read in full: {message}", "catalog",
                        repairable=True) for table, message in scan_catalog(con)]
    finally:
        con.close()


def working_copies(cat: Catalog) -> list[Problem]:
    """A working copy left by an interrupted writer (adopted by the next write-mode command) and
    working copies set aside because they were not this store's (never adopted; the user decides)."""
    out = []
    if cat.read_only and cat.work_file.exists() and WriterLock(cat.root).is_free():
        out.append(Problem("interrupted-write", WORKING_FILE, "an interrupted writer's committed work, not yet "
                           "published (readers see the state before it); the next write-mode command checks and "
                           "adopts it", "catalog", repairable=True))
    for aside in cat.set_aside_files():
        out.append(Problem("working-copy-set-aside", aside.name, "a working copy a writer did not adopt (damaged, "
                           "or another store's catalog); the store does not use it", "catalog",
                           hint="inspect it with duckdb -readonly, then delete it"))
    return out


def repair_catalog(root: Path, wait: float, on_wait=None) -> list[tuple[str, str, str]]:
    """Before ``verify --repair`` opens the store for writing: if the catalog (the working copy an
    interrupted writer left, else ``catalog.duckdb``) cannot be read in full, rebuild it from what
    can be read (:func:`stores.catalog_check.rebuild_catalog`) and move the damaged file to
    ``STORE/quarantine/``. Returns (check, where, what was done) rows; a StoreError (one line) if the
    catalog cannot be opened at all."""
    lock = WriterLock(root)
    lock.acquire(wait, on_wait)
    try:
        source = root / WORKING_FILE if (root / WORKING_FILE).is_file() else root / CATALOG_FILE
        try:
            con = duckdb.connect(str(source), read_only=True)
        except duckdb.Error as exc:
            if source.name == WORKING_FILE:
                return []  # the writer's own check sets it aside (one line) and starts from catalog.duckdb
            raise StoreError(f"{CATALOG_FILE} cannot be opened ({' '.join(str(exc).splitlines()[0].split())[:160]}): "
                             "its header or metadata are lost, so nothing in it can be rebuilt; restore it from a "
                             "backup (the Parquet shards and Faiss indexes are separate files and intact).") from None
        try:
            bad = scan_catalog(con)
        finally:
            con.close()
        if not bad:
            return []
        stamp = datetime.now().strftime("%Y%m%dT%H%M%S")
        rebuilt_file = root / (CATALOG_FILE + ".rebuild")
        try:
            rebuilt = rebuild_catalog(source, rebuilt_file)
        except duckdb.Error as exc:
            rebuilt_file.unlink(missing_ok=True)
            raise StoreError(f"{source.name} cannot be rebuilt ({' '.join(str(exc).splitlines()[0].split())[:160]}); "
                             "restore it from a backup.") from None
        vital = [t for t in ("_migrations", "meta") if t in rebuilt.lost_rows or t not in rebuilt.rows]
        if vital:  # without its schema records a catalog cannot be migrated or trusted
            rebuilt_file.unlink(missing_ok=True)
            raise StoreError(f"{source.name} cannot be rebuilt: its schema records ({', '.join(vital)}) are in "
                             "damaged blocks; restore it from a backup (the Parquet shards and Faiss indexes are "
                             "separate files and intact).")
        qdir = root / QUARANTINE
        qdir.mkdir(exist_ok=True)
        moved = qdir / f"{source.name}.damaged-{stamp}"
        os.replace(source, moved)
        wal = source.with_name(source.name + ".wal")
        if wal.exists():
            os.replace(wal, moved.with_name(moved.name + ".wal"))
        os.replace(rebuilt_file, root / CATALOG_FILE)
        fsync_dir(root)
        rows = [("catalog-checksum", f"{source.name}:{t}", f"unreadable blocks ({m})") for t, m in bad]
        lost = ", ".join(f"{n} {t}" for t, n in rebuilt.lost_rows.items()) or "no rows"
        rows.append(("catalog-rebuilt", CATALOG_FILE, f"rebuilt from the readable rows of {source.name} ({lost} lost; "
                     f"{sum(rebuilt.rows.values())} rows kept); the damaged file is {QUARANTINE}/{moved.name}"))
        rows += [("catalog-rebuilt", CATALOG_FILE, f"not re-created: {s}") for s in rebuilt.skipped
                 if not s.startswith("a view")]
        return rows
    finally:
        lock.release()


def _dedupe(problems: list[Problem]) -> list[Problem]:
    seen, out = set(), []
    for p in problems:
        key = (p.check, p.where, p.message)
        if key not in seen:
            seen.add(key)
            out.append(p)
    return out


# ---- repair -----------------------------------------------------------------------------
@dataclass
class RepairReport:
    actions: list[tuple[str, str, str]] = field(default_factory=list)  # (check, where, what was done)
    quarantined: list[str] = field(default_factory=list)
    images_to_reindex: int = 0
    reencode_needed: bool = False

    def add(self, check: str, where: str, what: str) -> None:
        self.actions.append((check, where, what))


def quarantine_pair(cat: Catalog, name: str, reason: str, report: RepairReport) -> None:
    """Move both files of a pair to STORE/quarantine/<table>/ and mark their records; never delete.

    Records change first (one transaction), files move second: a crash between leaves a file
    without a live record, which the next verify reports and repair moves."""
    live = tables.shard_records(cat, None)
    moves = []
    n_images = 0
    img = cat.shard_dir("images") / name
    if img.exists() and has_magic(img):
        try:
            n_images = pq.read_metadata(img).num_rows
        except Exception:  # noqa: BLE001
            n_images = 0
    with cat.transaction():
        for table in PAIR_TABLES:
            path = cat.shard_dir(table) / name
            rec = live.get((table, name))
            if path.exists():
                moves.append((table, path))
                if rec is None:
                    try:
                        info = describe_file(path)
                    except Exception:  # noqa: BLE001
                        info = dict(rows=-1, bytes=path.stat().st_size, sha256=files.file_sha256(path))
                    tables.insert_shard_records(cat, [dict(name=name, table_name=table, index_run_id=run_id_of(name),
                                                           state="quarantined", note=reason, **info)])
                else:
                    tables.set_shard_state(cat, table, name, "quarantined", reason)
            elif rec is not None and rec["state"] == "live":
                tables.set_shard_state(cat, table, name, "lost", reason)
                report.add("shard-missing", f"{table}/{name}", "record marked lost")
    for table, path in moves:
        dest_dir = cat.root / QUARANTINE / table
        dest_dir.mkdir(parents=True, exist_ok=True)
        dest = dest_dir / name
        k = 1
        while dest.exists():
            dest = dest_dir / f"{name}.{k}"
            k += 1
        shutil.move(str(path), str(dest))
        report.quarantined.append(_rel(cat, dest))
        report.add("quarantine", f"{table}/{name}", f"moved to {_rel(cat, dest)} ({reason})")
    report.images_to_reindex += n_images


def _move_templates(cat: Catalog) -> int:
    """Template prompts stored as attributes go back to class_prompts, with their embeddings (as m006)."""
    cond = TEMPLATE_ROWS
    with cat.transaction():
        n = cat.con.execute(f"SELECT count(*) FROM attributes WHERE {cond}").fetchone()[0]
        start = tables.next_prompt_id(cat)
        cat.con.execute(f"CREATE TEMP TABLE _moved AS SELECT attr_id, class_id, prompt, "
                        f"coalesce(nullif(substr(source, length('template:') + 1), ''), 'moved') AS template_set, "
                        f"{start} - 1 + row_number() OVER (ORDER BY attr_id) AS prompt_id FROM attributes WHERE {cond}")
        cat.con.execute("INSERT INTO class_prompts (prompt_id, class_id, template_set, template, prompt) "
                        "SELECT prompt_id, class_id, CASE WHEN starts_with(template_set, 'template:') THEN "
                        "substr(template_set, 10) ELSE template_set END, NULL, prompt FROM _moved")
        cat.con.execute("INSERT INTO class_prompt_embeddings (prompt_id, model, embedding) SELECT m.prompt_id, e.model, "
                        "e.embedding FROM attribute_embeddings e JOIN _moved m USING (attr_id)")
        cat.con.execute("DELETE FROM attribute_embeddings WHERE attr_id IN (SELECT attr_id FROM _moved)")
        cat.con.execute("DELETE FROM attributes WHERE attr_id IN (SELECT attr_id FROM _moved)")
        cat.con.execute("DROP TABLE _moved")
    return int(n)


def _bad_embedding_ids(cat: Catalog, table: str, key: str, fp: str) -> list[int]:
    ids, models, emb = _embedding_table(cat, table, key)
    if len(ids) == 0:
        return []
    mine = np.array([m == fp for m in models])
    finite = np.isfinite(emb).all(axis=1)
    norms = np.linalg.norm(np.where(np.isfinite(emb), emb, 0), axis=1)
    bad = mine & (~finite | (np.abs(norms - 1) > NORM_TOL))
    return [int(i) for i in ids[bad]]


def repair(cat: Catalog, problems: list[Problem] | None = None, *, reencode: bool = False) -> RepairReport:
    """Fix what ``problems`` (default: :func:`verify`) lists and can be fixed without a model.

    ``reencode=True`` also drops damaged attribute embeddings so the caller re-encodes them
    (with the store's model) together with the missing ones; the report says whether that is
    needed. Opening the store for writing (which the caller did) has already settled
    interrupted writes (``stores.shards.recover``)."""
    if cat.read_only:
        raise StoreError("repair needs the store opened for writing.")
    problems = verify(cat) if problems is None else problems
    report = RepairReport()
    checks = {p.check for p in problems}
    fp = cat.model
    attrs_changed = False
    shards_changed = False

    # catalog: the model record, views, the schema version
    if "store-model" in checks:
        used = sorted(_fingerprints_used(cat))
        if len(used) == 1:
            name, _, tag = used[0].partition("/")
            cat.claim_model(used[0], name, tag)
            fp = used[0]
            report.add("store-model", "store_model", f"recorded {used[0]} (the only model of its embeddings)")
    if "schema" in checks:
        cat.set_meta("schema_version", str(SCHEMA_VERSION))
        report.add("schema", "catalog.duckdb", f"schema version set to {SCHEMA_VERSION}")
    # attributes
    if "templates-in-attributes" in checks:
        n = _move_templates(cat)
        attrs_changed = True
        report.add("templates-in-attributes", "attributes", f"moved {n} template prompts to class_prompts")
    for p in problems:
        if p.check == "model-mixed" and p.where in ("attribute_embeddings", "class_prompt_embeddings") and fp:
            n = cat.con.execute(f"SELECT count(*) FROM {p.where} WHERE model <> ?", [fp]).fetchone()[0]
            cat.con.execute(f"DELETE FROM {p.where} WHERE model <> ?", [fp])
            attrs_changed = True
            report.add(p.check, p.where, f"dropped {n} embeddings of another model than {fp}")
        if p.check == "orphan-embeddings":
            key, owner = ("attr_id", "attributes") if p.where == "attribute_embeddings" else ("prompt_id", "class_prompts")
            n = cat.con.execute(f"DELETE FROM {p.where} WHERE {key} NOT IN (SELECT {key} FROM {owner})").fetchone()[0]
            report.add(p.check, p.where, f"dropped {n} embeddings of no stored text")
    for table, key in (("attribute_embeddings", "attr_id"), ("class_prompt_embeddings", "prompt_id")):
        if fp and any(p.where == table and p.check in ("embedding-nan", "embedding-norm", "embedding-dim") for p in problems):
            if table == "class_prompt_embeddings" or reencode:
                bad = _bad_embedding_ids(cat, table, key, fp)
                dims = [p for p in problems if p.where == table and p.check == "embedding-dim"]
                if dims:  # wrong dimension: every embedding of the table is unusable
                    bad = [int(r[0]) for r in cat.con.execute(f"SELECT {key} FROM {table} WHERE model = ?", [fp]).fetchall()]
                if bad:
                    cat.con.execute(f"DELETE FROM {table} WHERE model = ? AND list_contains(?, {key})", [fp, bad])
                attrs_changed = True
                report.add("embedding", table, f"dropped {len(bad)} damaged embeddings" +
                           (" (classify encodes class prompts again when it needs them)" if table != "attribute_embeddings"
                            else " (to be encoded again)"))
    if any(p.check == "attributes-unencoded" for p in problems) or (reencode and attrs_changed):
        report.reencode_needed = True
    # shards
    bad_pairs: dict[str, str] = {}
    for p in problems:
        if p.scope != "shards":
            continue
        table, name = _split(p.where)
        if not name:
            continue
        if p.check in PAIR_DAMAGE and p.repairable or p.check == "shard-missing":
            bad_pairs.setdefault(name, f"{p.check}: {p.message}")
    for name, reason in bad_pairs.items():
        quarantine_pair(cat, name, reason, report)
        shards_changed = True
    unrecorded = sorted({_split(p.where)[1] for p in problems if p.check == "shard-unrecorded"} - set(bad_pairs))
    if unrecorded:
        rows = []
        for name in unrecorded:
            for table in PAIR_TABLES:
                path = cat.shard_dir(table) / name
                if path.exists() and not tables.shard_records(cat, ("live",)).get((table, name)):
                    rows.append(dict(name=name, table_name=table, index_run_id=run_id_of(name), state="live",
                                     note="recorded by verify --repair", **describe_file(path)))
        with cat.transaction():
            tables.insert_shard_records(cat, rows)
        for r in rows:
            report.add("shard-unrecorded", f"{r['table_name']}/{r['name']}", f"recorded ({r['rows']} rows)")
    if report.images_to_reindex:
        report.add("quarantine", "images", f"{report.images_to_reindex} images left the store with their shards: "
                   "run index-images on their files again to encode them")
    cat.refresh_views()
    # Faiss indexes: rebuilt whenever one is off or what they are built from changed
    attr_index = any(p.scope == "attributes" and p.check.startswith(("index-", "prototypes-")) for p in problems)
    if fp and (attr_index or attrs_changed):
        ids, _ = indexes.prototype_attribute_ids(cat, fp)
        if len(ids):
            indexes.rebuild_attribute_indexes(cat, fp)
            report.add("index", "faiss/attributes.index, faiss/class_prototypes.index",
                       f"rebuilt from {len(ids)} encoded attributes")
    img_index = any(p.scope == "images-index" for p in problems)
    if fp and (img_index or shards_changed or unrecorded):
        indexes.rebuild_image_index(cat, fp)
        report.add("index", "faiss/images.index", "rebuilt from the full-view embeddings")
    if "views" in checks:
        for v in EXPLANATION_VIEWS:
            cat.con.execute(f"DROP VIEW IF EXISTS {v}")
        cat.refresh_views()
        for name in ("m004_explanation_views", "m015_catalog_descriptions"):  # m015 replaces m004's views
            next(m for m in MIGRATIONS if m.__name__ == name)(cat.con)
        report.add("views", "catalog.duckdb", "re-created the views")
    return report
