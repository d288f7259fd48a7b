"""How fast do the light commands start, against Python doing the same work with duckdb alone.

    PYTHONPATH=$PWD python benchmarks/bench_startup.py [--store DIR] [--repeats 5]

Each command runs ``--repeats`` times in a fresh process, alternating with its baseline (a
``python -c`` that imports only duckdb and click and does the same DuckDB work), and reports
the median wall time and the median peak RSS (``os.wait4``'s ``ru_maxrss`` of that one child):

* ``help``: ``pipeline --help`` vs ``import duckdb, click``;
* ``sql``: ``pipeline sql "select count(*) from alignments"`` vs opening ``catalog.duckdb``
  read-only and running the query;
* ``verify_quick``: ``pipeline verify --quick`` vs opening the catalog read-only and counting
  images and attributes (the summary it prints; the checks themselves have no bare twin);
* ``catalog_status``: ``pipeline catalog status`` vs opening the catalog read-only and counting
  the rows of every table.

The store is the demo's (``pipeline demo --store DIR``, built here when DIR has none). Targets
(issue 19): ``help`` and ``sql`` within 2x their baseline's wall time and under 150 MB peak.
Prints one JSON object.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
QUERY = "select count(*) from alignments"
TARGET_RATIO, TARGET_MB = 2.0, 150.0

BASE_OPEN = "import duckdb, click, sys; con = duckdb.connect(sys.argv[1] + '/catalog.duckdb', read_only=True); "
BASELINES = {
    "help": "import duckdb, click",
    "sql": BASE_OPEN + f"print(con.execute({QUERY!r}).fetchall())",
    "verify_quick": BASE_OPEN + "print(con.execute('select count(*) from images').fetchall(), "
                                "con.execute('select count(*) from attributes').fetchall())",
    "catalog_status": BASE_OPEN + (
        "names = [r[0] for r in con.execute(\"select table_name from information_schema.tables where "
        "table_schema = 'main' and table_type = 'BASE TABLE'\").fetchall()]; "
        "print({n: con.execute(f'select count(*) from \"{n}\"').fetchone()[0] for n in names})"),
}


def pipeline_args(name: str, store: Path) -> list[str]:
    return {
        "help": ["--help"],
        "sql": ["sql", QUERY, "--store", str(store)],
        "verify_quick": ["verify", "--quick", "--store", str(store)],
        "catalog_status": ["catalog", "status", "--store", str(store)],
    }[name]


def pipeline_command() -> list[str]:
    """The installed console script when it sits beside this interpreter, else the same entry point."""
    script = Path(sys.executable).with_name("pipeline")
    return [str(script)] if script.is_file() else [sys.executable, "-c", "from pipeline.cli import cli; cli()"]


def run_once(cmd: list[str], env: dict) -> tuple[float, float]:
    """(wall seconds, peak RSS MB) of one child: spawned, then reaped with os.wait4 for its rusage."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env, cwd=ROOT)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            err.seek(0)
            raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}): {err.read().decode()[-500:]}")
    return wall, usage.ru_maxrss / 1024  # Linux: kilobytes


def ensure_demo_store(store: Path, env: dict) -> None:
    if (store / "catalog.duckdb").is_file():
        return
    out = store.parent / "demo-output"
    print(f"building the demo store in {store} (pipeline demo)...", file=sys.stderr)
    subprocess.run([*pipeline_command(), "demo", "--store", str(store), "-o", str(out), "-q"], check=True, env=env,
                   cwd=ROOT, stdout=subprocess.DEVNULL)


def bench(name: str, store: Path, repeats: int, env: dict) -> dict:
    ours = [*pipeline_command(), *pipeline_args(name, store)]
    base = [sys.executable, "-c", BASELINES[name], str(store)]
    runs: dict[str, list[tuple[float, float]]] = {"pipeline": [], "baseline": []}
    run_once(ours, env)  # warm the file cache once for both
    run_once(base, env)
    for _ in range(repeats):  # alternate, so a busy moment of the machine hits both
        runs["pipeline"].append(run_once(ours, env))
        runs["baseline"].append(run_once(base, env))
    res = {}
    for who, values in runs.items():
        res[who] = {"wall_s": round(statistics.median(w for w, _ in values), 3),
                    "peak_rss_mb": round(statistics.median(m for _, m in values), 1)}
    res["wall_ratio"] = round(res["pipeline"]["wall_s"] / res["baseline"]["wall_s"], 2)
    res["rss_ratio"] = round(res["pipeline"]["peak_rss_mb"] / res["baseline"]["peak_rss_mb"], 2)
    res["command"] = "pipeline " + " ".join(pipeline_args(name, Path("STORE")))
    return res


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--store", type=Path, default=Path(tempfile.gettempdir()) / "zsl-bench-startup" / "store",
                    help="the demo store (built with `pipeline demo` when absent)")
    ap.add_argument("--repeats", type=int, default=5)
    a = ap.parse_args(argv)
    env = dict(os.environ, PYTHONPATH=str(ROOT), TQDM_DISABLE="1")
    store = a.store.resolve()
    store.parent.mkdir(parents=True, exist_ok=True)
    ensure_demo_store(store, env)
    results = {name: bench(name, store, a.repeats, env) for name in BASELINES}
    targets = {name: results[name]["wall_ratio"] <= TARGET_RATIO and results[name]["pipeline"]["peak_rss_mb"] < TARGET_MB
               for name in ("help", "sql")}
    report = {"repeats": a.repeats, "python": sys.version.split()[0], "cpus": os.cpu_count(), "results": results,
              "targets": {"wall_ratio_max": TARGET_RATIO, "peak_rss_mb_max": TARGET_MB, "met": targets}}
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
