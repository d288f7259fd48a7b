"""`pipeline --help`, `pipeline sql` and `pipeline catalog status` start without the heavy
libraries (the durable half of benchmarks/bench_startup.py): each command runs in a fresh
interpreter that then reports which of them ``sys.modules`` holds."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from stores.catalog import Catalog

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "open_clip", "faiss", "matplotlib", "ray", "PIL", "scipy", "ot", "numpy", "pyarrow", "openai")

RUNNER = """
import json, sys
args = json.loads(sys.argv[1])
sys.argv = ["pipeline", *args]
from pipeline.cli import cli
code = 0
try:
    cli()
except SystemExit as exc:
    code = exc.code or 0
print("\\nMODULES " + json.dumps({"code": code, "loaded": sorted(m for m in sys.modules if m.split(".")[0] in %r)}))
""" % (HEAVY,)


def run_cli(args: list[str]) -> tuple[int, list[str], str]:
    out = subprocess.run([sys.executable, "-c", RUNNER, json.dumps(args)], capture_output=True, text=True, cwd=ROOT,
                         timeout=300)
    last = out.stdout.rsplit("MODULES ", 1)
    assert len(last) == 2, out.stderr[-2000:]
    report = json.loads(last[1])
    return report["code"], sorted({m.split(".")[0] for m in report["loaded"]}), last[0] + out.stderr


@pytest.fixture(scope="module")
def empty_store(tmp_path_factory):
    root = tmp_path_factory.mktemp("startup") / "store"
    Catalog(root).close()  # a migrated, empty store: every table exists
    return root


def test_help_imports_no_heavy_library():
    code, loaded, output = run_cli(["--help"])
    assert code == 0 and "pipeline sql" in output
    assert loaded == []


def test_sql_imports_no_heavy_library(empty_store):
    code, loaded, output = run_cli(["sql", "select count(*) as n from alignments", "--store", str(empty_store),
                                    "--format", "json"])
    assert code == 0, output
    assert json.loads(output[:output.rindex("]") + 1]) == [{"n": 0}]
    assert loaded == []


def test_catalog_status_imports_no_heavy_library(empty_store):
    code, loaded, output = run_cli(["catalog", "status", "--store", str(empty_store)])
    assert code == 0 and "schema_version" in output, output
    assert loaded == []


def test_runner_sees_a_heavy_import():
    """The check can fail: a command that reaches a stage's imports is reported."""
    code, loaded, _ = run_cli(["classify", "--store", "/nonexistent/zsl-startup-store"])
    assert code != 0  # no store
    assert "numpy" in loaded and "pyarrow" in loaded


def test_verify_quick_imports_no_torch(empty_store):
    """verify reads shards and Faiss files (numpy, pyarrow, faiss) but never runs a model."""
    code, loaded, output = run_cli(["verify", "--quick", "--store", str(empty_store)])
    assert code == 0, output
    assert not {"torch", "open_clip", "matplotlib", "scipy", "PIL"} & set(loaded)
