"""Issue 21, deliverables 2 and 3: lock and working-copy files that cannot hurt, a reader that
never publishes, a writer that adopts only its own store's working copy, and a ``verify`` that
reads every block of the catalog (and rebuilds it with ``--repair``)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import duckdb
import pytest
from click.testing import CliRunner

from pipeline.cli import cli
from stores.catalog import CATALOG_FILE, WORKING_FILE, Catalog
from stores.errors import StoreError
from stores.locks import LOCK_FILE

REPO = Path(__file__).resolve().parents[2]


def _store(root: Path, n: int = 3) -> Path:
    with Catalog(root) as w:
        for i in range(1, n + 1):
            w.query("INSERT INTO classes (class_id, name, norm_name) VALUES (?, ?, ?)", [i, f"c{i}", f"c{i}"])
    return root


def _classes(root: Path) -> list[int]:
    with Catalog(root, read_only=True) as r:
        return sorted(x[0] for x in r.query("SELECT class_id FROM classes").fetchall())


def _one_line(res) -> str:
    assert res.exit_code == 1, res.output
    assert "Traceback" not in res.output and res.output.startswith("Error: ") and res.output.count("\n") == 1, res.output
    return res.output


# ---- the lock file --------------------------------------------------------------------------
def test_a_symlinked_lock_file_is_refused_and_its_target_untouched(tmp_path):
    root = _store(tmp_path / "s")
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    (root / LOCK_FILE).unlink()  # what an attacker (or an unlucky user) replaces
    os.symlink(victim, root / LOCK_FILE)
    with pytest.raises(StoreError, match="symbolic link"):
        Catalog(root)
    assert victim.read_text() == "precious\n"
    res = CliRunner().invoke(cli, ["catalog", "migrate", "--store", str(root)])
    assert "symbolic link" in _one_line(res)
    assert victim.read_text() == "precious\n"


def test_a_folder_in_place_of_the_lock_file_is_refused(tmp_path):
    root = _store(tmp_path / "s")
    (root / LOCK_FILE).unlink()
    (root / LOCK_FILE).mkdir()
    with pytest.raises(StoreError, match="is a folder"):
        Catalog(root)


def test_the_lock_file_and_the_waiting_message_never_carry_argv(tmp_path):
    root = _store(tmp_path / "s")
    key = "sk-lockcanary-0123456789"
    code = textwrap.dedent(f"""
        import sys, time
        sys.argv = ["pipeline", "build-attributes", "classes.txt", "--api-key", {key!r}]
        from stores.catalog import Catalog
        w = Catalog({str(root)!r})
        print("open", flush=True)
        time.sleep(60)
        """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONPATH=str(REPO)))
    try:
        assert proc.stdout.readline().strip() == "open"
        raw = (root / LOCK_FILE).read_text()
        info = json.loads(raw)
        assert info["pid"] == proc.pid and set(info) == {"pid", "command", "since"}, info
        assert key not in raw and "--api-key" not in raw
        assert oct((root / LOCK_FILE).stat().st_mode & 0o777) == "0o600"
        notes: list[str] = []
        with pytest.raises(StoreError) as err:
            Catalog(root, wait=0.3, on_wait=notes.append)
        said = str(err.value) + " ".join(notes)
        assert f"pid {proc.pid}" in said and "since" in said and key not in said and "--api-key" not in said
    finally:
        proc.kill()
        proc.wait()


# ---- working copies ---------------------------------------------------------------------------
def _published_bytes(root: Path) -> bytes:
    return (root / CATALOG_FILE).read_bytes()


@pytest.mark.parametrize("kind", ["truncated", "foreign", "zeroed"])
def test_a_bad_working_copy_is_never_published_by_a_reader_and_set_aside_by_a_writer(tmp_path, kind):
    root = _store(tmp_path / "s", n=3)
    other = _store(tmp_path / "other", n=7)  # another store's catalog: 7 classes
    work = root / WORKING_FILE
    if kind == "truncated":
        data = _published_bytes(root)
        work.write_bytes(data[: len(data) // 2])
    elif kind == "foreign":
        work.write_bytes(_published_bytes(other))
    else:
        work.write_bytes(b"\0" * len(_published_bytes(root)))
    before = _published_bytes(root)
    res = CliRunner().invoke(cli, ["sql", "select count(*) from classes", "--store", str(root), "--format", "csv"])
    assert res.exit_code == 0 and res.output.splitlines()[-1] == "3", res.output
    assert _published_bytes(root) == before and work.exists()  # the reader published nothing
    res = CliRunner().invoke(cli, ["verify", "--store", str(root)])
    assert "interrupted-write" in res.output and res.exit_code == 1
    notes: list[str] = []
    with Catalog(root, on_wait=notes.append) as w:
        assert sorted(x[0] for x in w.query("SELECT class_id FROM classes").fetchall()) == [1, 2, 3]
    assert len(notes) == 1 and "set aside" in notes[0] and "locked" not in notes[0], notes
    assert _classes(root) == [1, 2, 3]
    aside = sorted(root.glob(WORKING_FILE + ".set-aside-*"))
    assert len(aside) == 1 and aside[0].read_bytes()[:64] == (b"\0" * 64 if kind == "zeroed" else aside[0].read_bytes()[:64])
    res = CliRunner().invoke(cli, ["verify", "--store", str(root), "--format", "json"])
    found = json.loads(res.stdout if hasattr(res, "stdout") else res.output.split("\n", 1)[0])
    assert [p["check"] for p in found] == ["working-copy-set-aside"] and res.exit_code == 1


def test_the_writers_own_interrupted_working_copy_is_adopted(tmp_path):
    root = _store(tmp_path / "s", n=2)
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(f"""
        import os
        from stores.catalog import Catalog
        w = Catalog({str(root)!r})
        w._copy_seconds = 3600.0  # publishing made dear: the commit stays in the working copy
        with w.transaction():
            w.query("INSERT INTO classes (class_id, name, norm_name) VALUES (9, 'c9', 'c9')")
        os.kill(os.getpid(), 9)
        """)], env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert proc.returncode == -9 and (root / WORKING_FILE).exists()
    assert _classes(root) == [1, 2]  # readers: the published state
    with Catalog(root):
        pass
    assert _classes(root) == [1, 2, 9] and not list(root.glob("*.set-aside-*"))


def test_a_symlink_in_place_of_the_working_copy_is_refused(tmp_path):
    root = _store(tmp_path / "s")
    victim = tmp_path / "victim.duckdb"
    victim.write_text("precious")
    os.symlink(victim, root / WORKING_FILE)
    with pytest.raises(StoreError, match="symbolic link"):
        Catalog(root)
    assert victim.read_text() == "precious"


# ---- verify reads every block -------------------------------------------------------------------
def _flip_bit_in_data(root: Path) -> None:
    """Flip one bit in a data block of the classes table (found by its distinctive text)."""
    path = root / CATALOG_FILE
    data = bytearray(path.read_bytes())
    at = data.rfind(b"quokkamarker1500")  # a row in the middle of the table (the first/last are also in its statistics)
    assert at > 0
    data[at + 3] ^= 0x04
    path.write_bytes(bytes(data))


def _marked_store(root: Path) -> Path:
    with Catalog(root) as w:
        w.query("INSERT INTO classes (class_id, name, norm_name) SELECT i, 'quokkamarker' || i, 'quokkamarker' || i "
                "FROM range(1, 3001) t(i)")
        w.query("CREATE TABLE IF NOT EXISTS _probe AS SELECT 1 AS x")
    return root


def test_verify_finds_a_flipped_bit_and_repair_rebuilds_the_catalog(tmp_path):
    root = _marked_store(tmp_path / "s")
    res = CliRunner().invoke(cli, ["verify", "--store", str(root)])
    assert res.exit_code == 0, res.output
    _flip_bit_in_data(root)
    res = CliRunner().invoke(cli, ["verify", "--store", str(root), "--format", "csv"])
    assert res.exit_code == 1 and "catalog-checksum" in res.output and "classes" in res.output, res.output
    res = CliRunner().invoke(cli, ["classify", "--store", str(root), "--method", "clip"])
    _one_line(res)  # no DuckDB traceback from a writer either
    res = CliRunner().invoke(cli, ["verify", "--repair", "--store", str(root), "--format", "csv"])
    assert "catalog-rebuilt" in res.output and "Traceback" not in res.output, res.output
    assert list((root / "quarantine").glob("catalog.duckdb.damaged-*"))
    res = CliRunner().invoke(cli, ["verify", "--store", str(root)])
    assert res.exit_code == 0 and "store OK" in res.output, res.output
    with Catalog(root) as w:  # a writer works again; the rows of undamaged row groups are all there
        n = w.query("SELECT count(*) FROM classes").fetchone()[0]
    assert n == 3000 or n % 122_880 == 0


def test_a_half_truncated_catalog_is_one_line_everywhere(tmp_path):
    root = _marked_store(tmp_path / "s")
    path = root / CATALOG_FILE
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    for args in (["verify"], ["verify", "--repair"], ["classify", "--method", "clip"], ["sql", "select 1"]):
        res = CliRunner().invoke(cli, [*args, "--store", str(root)])
        assert res.exit_code == 1 and "Traceback" not in res.output, (args, res.output)
        assert res.exception is None or isinstance(res.exception, SystemExit), (args, res.exception)
    res = CliRunner().invoke(cli, ["verify", "--repair", "--store", str(root)])
    assert "restore it from a backup" in res.output


def test_duckdb_exposes_no_block_error_to_count_star_alone(tmp_path):
    """The control: the checks verify ran before (counts, schema queries) do not see the flip."""
    root = _marked_store(tmp_path / "s")
    _flip_bit_in_data(root)
    con = duckdb.connect(str(root / CATALOG_FILE), read_only=True)
    assert con.execute("SELECT count(*) FROM classes").fetchone()[0] == 3000
    with pytest.raises(duckdb.Error, match="checksum"):
        con.execute("SELECT max(name) FROM classes").fetchall()
    con.close()
