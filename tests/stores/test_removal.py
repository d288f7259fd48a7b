"""remove-images: the images, their regions and results go; everything else stays bit for bit."""
from __future__ import annotations

import pytest

from stores import files, tables
from stores.catalog import Catalog
from stores.errors import StoreError
from stores.faiss_index import index_vectors, read_index
from stores.removal import plan_removal, remove_images
from stores.verify import verify
from tests.helpers.damage import build_small_store, copy_store


@pytest.fixture(scope="module")
def base(tmp_path_factory, tiny_model):
    return build_small_store(tmp_path_factory.mktemp("removal"), tiny_model)


def snapshot(cat: Catalog) -> dict:
    """Everything per image: its row, regions (with embeddings) and results."""
    return dict(
        images={r[0]: r[1:] for r in cat.query("SELECT image_id, path, label, sha256 FROM images").fetchall()},
        regions={r[0]: r[1:] for r in cat.query("SELECT region_id, image_id, kind, x0, y0, x1, y1, embedding FROM regions").fetchall()},
        predictions=sorted(cat.query("SELECT * FROM predictions").fetchall()),
        alignments=sorted(cat.query("SELECT * FROM alignments").fetchall()),
    )


def without(snap: dict, gone: set[int]) -> dict:
    return dict(
        images={k: v for k, v in snap["images"].items() if k not in gone},
        regions={k: v for k, v in snap["regions"].items() if v[0] not in gone},
        predictions=[r for r in snap["predictions"] if r[1] not in gone],
        alignments=[r for r in snap["alignments"] if r[1] not in gone],
    )


@pytest.mark.parametrize("how", ["label", "path", "folder", "image_id", "index_run"])
def test_remove_by_each_criterion(how, base, tmp_path):
    store = copy_store(base, tmp_path / "s")
    with Catalog(store) as cat:
        before = snapshot(cat)
        rows = cat.query("SELECT image_id, path, label FROM images ORDER BY path").fetchall()
        dogs = [r for r in rows if r[2] == "dog"]
        crit = {
            "label": dict(labels=["dog"]),
            "path": dict(paths=[dogs[0][1], dogs[3][1]]),
            "folder": dict(paths=[str((base.parent / "imgs" / "dog"))]),
            "image_id": dict(image_ids=[rows[0][0]]),
            "index_run": dict(index_runs=[1]),
        }[how]
        want = {"label": {r[0] for r in dogs}, "path": {dogs[0][0], dogs[3][0]}, "folder": {r[0] for r in dogs},
                "image_id": {rows[0][0]}, "index_run": {r[0] for r in rows}}[how]
        plan = plan_removal(cat, **crit)
        assert set(plan.image_ids.tolist()) == want and plan.unmatched == []
        assert plan.results["predictions"] == sum(1 for r in before["predictions"] if r[1] in want)
        report = remove_images(cat, plan)
        assert report.images == len(want)
        assert report.regions == sum(1 for v in before["regions"].values() if v[0] in want)
        assert report.results["alignments"] == sum(1 for r in before["alignments"] if r[1] in want)
        assert snapshot(cat) == without(before, want)
        ids, _ = index_vectors(read_index(store / "faiss" / "images.index")[0])
        assert sorted(ids.tolist()) == sorted(set(before["images"]) - want)
        touched = {r["shard"] for r in plan.images}
        assert not ({p.name for p in cat.shard_files("images")} & touched)  # rewritten pairs have new names
        states = dict(cat.query("SELECT name, state FROM shards WHERE table_name = 'images'").fetchall())
        assert all(states[n] == "retired" for n in touched)
        assert verify(cat) == []


def test_dry_run_plan_changes_nothing(base, tmp_path):
    store = copy_store(base, tmp_path / "s")
    digest = {p: files.file_sha256(p) for p in store.rglob("*") if p.is_file() and p.suffix != ".duckdb"}
    with Catalog(store, read_only=True) as cat:
        plan = plan_removal(cat, labels=["cat", "nobody"])
        assert len(plan) == 4 and plan.unmatched == ["--label nobody"]
    assert {p: files.file_sha256(p) for p in digest} == digest


def test_criteria_are_required(base, tmp_path):
    with Catalog(copy_store(base, tmp_path / "s"), read_only=True) as cat, pytest.raises(StoreError):
        plan_removal(cat)


def test_crash_after_commit_is_finished_by_the_next_writer(base, tmp_path, monkeypatch):
    store = copy_store(base, tmp_path / "s")
    with Catalog(store) as cat:
        before = snapshot(cat)
        plan = plan_removal(cat, labels=["cat"])
        gone = set(plan.image_ids.tolist())
        monkeypatch.setattr(files.Staged, "publish", lambda self: (_ for _ in ()).throw(KeyboardInterrupt))
        with pytest.raises(KeyboardInterrupt):
            remove_images(cat, plan)
        monkeypatch.undo()
    with Catalog(store) as cat:  # recovery: publish the new pairs, remove the retired ones
        assert cat.recovery.published and cat.recovery.removed_retired
        assert snapshot(cat) == without(before, gone)
        remove_images(cat, plan_removal(cat, labels=["cat"]))  # the re-run: nothing left, index rebuilt
        assert verify(cat) == []


def test_crash_before_commit_changes_nothing(base, tmp_path, monkeypatch):
    store = copy_store(base, tmp_path / "s")
    with Catalog(store) as cat:
        before = snapshot(cat)
        plan = plan_removal(cat, labels=["dog"])
        monkeypatch.setattr(tables, "image_result_counts", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
        with pytest.raises(KeyboardInterrupt):
            remove_images(cat, plan)
        monkeypatch.undo()
    with Catalog(store) as cat:
        assert snapshot(cat) == before
        assert verify(cat) == []


def test_removing_every_image_empties_the_image_index(base, tmp_path):
    store = copy_store(base, tmp_path / "s")
    with Catalog(store) as cat:
        remove_images(cat, plan_removal(cat, labels=["cat", "dog"]))
        assert tables.image_count(cat) == 0
        assert cat.query("SELECT count(*) FROM predictions").fetchone()[0] == 0
        assert read_index(store / "faiss" / "images.index")[0].ntotal == 0
        assert verify(cat) == []


def test_a_mistaken_index_run_is_undone_and_can_be_redone(base, tmp_path, tiny_model):
    """Index a folder by mistake (here: with too few crops), remove its index run, index it
    again: the second indexing encodes every image again (it is no longer a no-op)."""
    from pipeline.config import RegionConfig
    from pipeline.stages.index_images import index_images
    from tests.helpers import write_image

    store = copy_store(base, tmp_path / "s")
    for i in range(3):
        write_image(tmp_path / "more" / "owl" / f"{i}.png", size=(70, 60), color=(90, 200, 90), seed=50 + i)
    with Catalog(store) as cat:
        before = snapshot(cat)
        rep = index_images(cat, tiny_model, [str(tmp_path / "more")], RegionConfig(n_crops=1), progress=False, workers=0)
        assert rep.indexed == 3
        run = cat.query("SELECT max(index_run_id) FROM index_runs").fetchone()[0]
        remove_images(cat, plan_removal(cat, index_runs=[run]))
        assert snapshot(cat) == before
        again = index_images(cat, tiny_model, [str(tmp_path / "more")], RegionConfig(n_crops=4), progress=False, workers=0)
        assert (again.indexed, again.skipped) == (3, 0)
        assert cat.query("SELECT count(*) FROM regions JOIN images USING (image_id) WHERE label = 'owl'").fetchone()[0] == 15
        assert verify(cat) == []


def test_killed_before_deleting_the_old_pair_readers_leave_it_out(base, tmp_path):
    """remove-images committed its rewrite (old pair retired) and was killed before deleting the
    old files: a reader sees the store without the removed images (no doubled rows), quick_check
    says shard-retired (not unrecorded damage), and the next writer deletes the files."""
    import shutil

    from stores.verify import quick_check, require_usable

    store = copy_store(base, tmp_path / "s")
    with Catalog(store) as cat:
        before = snapshot(cat)
        plan = plan_removal(cat, labels=["cat"])
        old = sorted({cat.shard_dir(t) / r["shard"] for r in plan.images for t in ("images", "regions")})
        kept = {p: tmp_path / "kept" / p.parent.name / p.name for p in old}
        for src, dst in kept.items():
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)
        remove_images(cat, plan)
        gone = set(plan.image_ids.tolist())
    for src, dst in kept.items():  # as if the process died between the commit and the unlink
        shutil.copy2(dst, src)
    with Catalog(store, read_only=True) as cat:
        assert snapshot(cat) == without(before, gone)
        found = quick_check(cat)
        assert {p.check for p in found} == {"shard-retired"} and len(found) == len(old)
        require_usable(cat, "classify")  # a reader does not refuse
        # killed half-way through the deletion (regions go first): the images file alone is no damage
        for p in old:
            if p.parent.name == "regions":
                p.unlink()
    with Catalog(store, read_only=True) as cat:
        assert snapshot(cat) == without(before, gone)
        assert {p.check for p in quick_check(cat)} == {"shard-retired"}
    with Catalog(store) as cat:
        assert sorted(cat.recovery.removed_retired) == sorted({f"images/{p.name}" for p in old
                                                               if p.parent.name == "images"})
        assert not any(p.exists() for p in old) and verify(cat) == []
