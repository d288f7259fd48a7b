"""Migration m015: every table, view and column carries a description; each name is listed once."""
from __future__ import annotations

import pytest

from stores.catalog import Catalog


def _undescribed(con) -> list[str]:
    missing = [f"table {t}" for t, c in con.execute(
        "SELECT table_name, comment FROM duckdb_tables() WHERE NOT internal").fetchall() if not c]
    missing += [f"view {v}" for v, c in con.execute(
        "SELECT view_name, comment FROM duckdb_views() WHERE NOT internal").fetchall() if not c]
    missing += [f"column {t}.{k}" for t, k, c in con.execute(
        "SELECT table_name, column_name, comment FROM duckdb_columns() WHERE NOT internal").fetchall() if not c]
    return missing


@pytest.mark.parametrize("read_only", [False, True])
def test_every_table_view_and_column_is_described_and_listed_once(tmp_path, read_only):
    with Catalog(tmp_path / "s"):
        pass
    with Catalog(tmp_path / "s", read_only=read_only) as cat:
        assert _undescribed(cat.con) == []
        names = [r[0] for r in cat.con.execute("SHOW TABLES").fetchall()]
        assert len(names) == len(set(names)), sorted(n for n in names if names.count(n) > 1)
        assert {"images", "regions", "class_confusions", "contributions", "contrasts"} <= set(names)
        # the same name means the same thing in every table
        run_ids = {c for (c,) in cat.con.execute(
            "SELECT DISTINCT comment FROM duckdb_columns() WHERE column_name = 'image_id' AND table_name <> 'contrasts'"
        ).fetchall()}
        assert run_ids == {"The image (images.image_id)."}


def test_views_over_results_carry_run_id_and_method(tmp_path):
    with Catalog(tmp_path / "s") as cat:
        for view in ("class_confusions", "contributions", "top_attributes", "attribute_usage", "contrasts"):
            cols = [r[0] for r in cat.con.execute(
                "SELECT column_name FROM duckdb_columns() WHERE table_name = ?", [view]).fetchall()]
            assert cols[:2] == ["run_id", "method"], (view, cols)
        cols = {r[0] for r in cat.con.execute(
            "SELECT column_name FROM duckdb_columns() WHERE table_name = 'contributions'").fetchall()}
        assert "mass" not in cols and "share" in cols  # mass was 1/N in every row


def test_sql_tables_and_describe_show_the_descriptions(tmp_path):
    import json

    from click.testing import CliRunner

    from pipeline.cli import cli
    from stores.descriptions import describe

    store = str(tmp_path / "s")
    with Catalog(store) as cat:
        n_views = cat.con.execute("SELECT count(DISTINCT view_name) FROM duckdb_views() WHERE NOT internal").fetchone()[0]
    r = CliRunner().invoke(cli, ["sql", "--tables", "--store", store, "--format", "json"])
    assert r.exit_code == 0, r.output
    rows = json.loads(r.output)
    names = [x["name"] for x in rows]
    assert len(names) == len(set(names)) and sum(x["kind"] == "view" for x in rows) == n_views
    assert all(x["description"] == describe(x["name"]) for x in rows)
    r = CliRunner().invoke(cli, ["sql", "--describe", "contrasts", "--store", store, "--format", "json"])
    cols = json.loads(r.output)
    assert [c["column"] for c in cols[:3]] == ["run_id", "method", "image_id"]
    assert all(c["description"] == describe("contrasts", c["column"]) for c in cols)
    r = CliRunner().invoke(cli, ["sql", "--describe", "nope", "--store", store])
    assert r.exit_code != 0 and "pipeline sql --tables" in r.output and "Traceback" not in r.output
    r = CliRunner().invoke(cli, ["sql", "--store", store])
    assert r.exit_code != 0 and "--tables" in r.output and "Traceback" not in r.output
