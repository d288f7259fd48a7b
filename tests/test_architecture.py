"""The layers of docs/architecture.md, checked on the source (``ast``, nothing imported).

Each rule runs on the real tree and on a planted fixture tree under ``tmp_path`` where it must
fail, so a rule that can never fire is caught too.
"""
from __future__ import annotations

import re
from pathlib import Path

from tests.helpers import layering

ROOT = Path(__file__).resolve().parents[1]
#: cycles owned by other branches of issue 19/20; the integrator drops an entry when its branch lands
OWNED_ELSEWHERE = {
    "explain20 branch": {"pipeline.explain.compare", "pipeline.explain.concepts", "pipeline.explain.explain",
                         "pipeline.explain.faithfulness", "pipeline.explain.pixel_maps"},
    "registry branch": {"pipeline.stages.classify", "pipeline.stages.compositional"},
}
#: SQL still executed outside stores/ by modules another branch is rewriting
SQL_OWNED_ELSEWHERE = {"pipeline/explain/": "explain20 branch"}


def plant(root: Path, files: dict[str, str]) -> Path:
    """Write a small source tree: {relative path: source}; packages get their __init__.py."""
    for rel, src in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(src)
        for parent in path.relative_to(root).parents:
            if str(parent) != ".":
                (root / parent / "__init__.py").touch()
    return root


# ---- queries/ is pure math ---------------------------------------------------------------
def test_queries_import_nothing_of_the_project():
    assert layering.queries_imports(ROOT) == []


def test_queries_rule_fails_on_a_planted_import(tmp_path):
    plant(tmp_path, {"queries/good.py": "import numpy as np\nfrom queries.other import f\n",
                     "queries/other.py": "def f(): pass\n",
                     "queries/bad.py": "def g():\n    from stores import tables\n",
                     "queries/worse.py": "from pipeline.config import MethodConfig\n"})
    found = layering.queries_imports(tmp_path)
    assert [f.split(":")[0] for f in found] == ["queries/bad.py", "queries/worse.py"]
    assert "imports stores " in found[0] and "imports pipeline.config " in found[1]


# ---- SQL only in stores/ -----------------------------------------------------------------
def test_sql_is_executed_only_in_stores():
    found = layering.execute_outside_stores(ROOT)
    ours = [f for f in found if not any(f.startswith(p) for p in SQL_OWNED_ELSEWHERE)]
    assert ours == []


def test_sql_is_executed_only_in_stores_explain():
    assert layering.execute_outside_stores(ROOT) == []


def test_sql_rule_fails_on_a_planted_execute(tmp_path):
    plant(tmp_path, {"stores/tables.py": "def n(cat):\n    return cat.con.execute('SELECT 1').fetchone()\n",
                     "pipeline/sql.py": "def run(cat, s):\n    return cat.con.execute(s)\n",
                     "pipeline/cli/verify.py": "def summary(cat):\n    x = 1\n    return cat.con.execute('SELECT 2')\n"})
    assert layering.execute_outside_stores(tmp_path) == [
        "pipeline/cli/verify.py:3: .execute( outside stores/ (add a function to stores/ instead)"]


# ---- no import cycles --------------------------------------------------------------------
def test_no_import_cycle_between_modules():
    cycles = layering.import_cycles(ROOT)
    ours = [c for c in cycles if not any(set(c) <= owned for owned in OWNED_ELSEWHERE.values())]
    assert ours == [], ours


def test_no_import_cycle_in_explain():
    assert not any(set(c) & OWNED_ELSEWHERE["explain20 branch"] for c in layering.import_cycles(ROOT))


def test_no_import_cycle_classify_compositional():
    assert not any(set(c) & OWNED_ELSEWHERE["registry branch"] for c in layering.import_cycles(ROOT))


def test_no_import_cycle_between_packages():
    assert layering.package_cycles(ROOT) == []


def test_cycle_rule_fails_on_planted_cycles(tmp_path):
    plant(tmp_path, {
        # a module-level cycle through a relative import
        "stores/a.py": "from .b import x\n",
        "stores/b.py": "from stores import c\nx = 1\n",
        "stores/c.py": "import stores.a\n",
        # a cycle hidden inside a function still counts
        "pipeline/stages/one.py": "from pipeline.engines.two import f\n",
        "pipeline/engines/two.py": "def f():\n    from pipeline.stages import one\n",
        # a type-only import never runs: no cycle
        "pipeline/p.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pipeline.q import Q\n",
        "pipeline/q.py": "import pipeline.p\n",
    })
    assert layering.import_cycles(tmp_path) == [["pipeline.engines.two", "pipeline.stages.one"],
                                                ["stores.a", "stores.b", "stores.c"]]
    assert layering.package_cycles(tmp_path) == [["pipeline.engines", "pipeline.stages"]]


# ---- heavy libraries stay out of `pipeline --help` and `pipeline sql` ---------------------
def test_startup_modules_import_no_heavy_library_at_module_level():
    closure = layering.startup_closure(ROOT)
    assert {"pipeline.cli.runs", "pipeline.sql", "stores.catalog"} <= set(closure)  # the walk reaches them
    assert layering.heavy_at_startup(ROOT) == []


def test_heavy_rule_fails_on_a_planted_import(tmp_path):
    plant(tmp_path, {
        # imports inside a function the module calls while it is imported run at import time
        "pipeline/cli/__init__.py": "def _register():\n    from . import runs\n\n\n_register()\n",
        "pipeline/cli/runs.py": "from pipeline.stages import classify\n\ndef cmd():\n    import torch\n",
        "pipeline/stages/classify.py": "import numpy as np\nfrom queries import lazsl\n",
        "queries/__init__.py": "import torch\n",
        "queries/lazsl.py": "x = 1\n",
        "pipeline/sql.py": "import duckdb\n",
        "pipeline/toy/train.py": "import torch\n",  # not imported at start-up: fine
    })
    found = layering.heavy_at_startup(tmp_path)
    assert [f.split(":")[0] for f in found] == ["pipeline/stages/classify.py", "queries/__init__.py"]
    assert "via pipeline.cli.runs" in found[0]


# ---- docs/architecture.md agrees with the tree ---------------------------------------------
DOC = ROOT / "docs" / "architecture.md"
PATH_RE = re.compile(r"\b((?:pipeline|stores|queries)(?:/[A-Za-z_][A-Za-z0-9_]*)*(?:\.py|/))")


def named_paths(text: str) -> set[str]:
    """Module and package paths the document names (``stores/tables/``, ``pipeline/cli/output.py``)."""
    return {m.group(1) for m in PATH_RE.finditer(text)}


def packages(root: Path) -> set[str]:
    return {p.parent.relative_to(root).as_posix() + "/" for top in layering.PACKAGES
            for p in (root / top).rglob("__init__.py")}


def architecture_problems(root: Path, doc: str) -> list[str]:
    names = named_paths(doc)
    missing = sorted(n for n in names if not (root / n).exists())
    unnamed = sorted(p for p in packages(root) if p not in names)
    return [f"names {n}, which does not exist" for n in missing] + [f"does not name the package {p}" for p in unnamed]


def test_architecture_doc_names_what_exists_and_every_package():
    assert architecture_problems(ROOT, DOC.read_text(encoding="utf-8")) == []


def test_architecture_check_fails_on_a_stale_doc(tmp_path):
    plant(tmp_path, {"stores/tables/runs.py": "", "pipeline/cli/output.py": "", "queries/lazsl.py": ""})
    doc = "`stores/tables/` holds reads; `pipeline/cli/output.py` prints; `queries/` math; `stores/gone.py` old."
    assert architecture_problems(tmp_path, doc) == ["names stores/gone.py, which does not exist",
                                                    "does not name the package pipeline/",
                                                    "does not name the package pipeline/cli/",
                                                    "does not name the package stores/"]


# ---- an import inside a function defers a heavy library, and says so ------------------------
def test_imports_inside_functions_defer_something_heavy():
    assert layering.needless_deferrals(ROOT) == []


def test_imports_inside_functions_are_marked():
    assert layering.unmarked_deferrals(ROOT) == []


def test_deferral_rules_fail_on_planted_imports(tmp_path):
    plant(tmp_path, {
        "pipeline/light.py": "import json\n",
        "pipeline/model.py": "def load():\n    # heavy: imported on use\n    import torch\n    import open_clip\n",
        "pipeline/stage.py": ("import numpy as np\n\n"
                              "def run():\n    from pipeline import light\n    import numpy\n\n"
                              "def fit():\n    import torch\n"),
    })
    assert [f.split(" defers")[0] for f in layering.needless_deferrals(tmp_path)] == [
        "pipeline/stage.py:4: pipeline.light", "pipeline/stage.py:5: numpy"]
    assert layering.unmarked_deferrals(tmp_path) == [
        f"pipeline/stage.py:{n}: import inside a function without `# heavy: imported on use`" for n in (4, 5, 8)]


def test_every_package_is_shipped():
    """A package missing from pyproject's list is absent from a wheel (pip install .)."""
    import tomllib

    shipped = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    assert {p.rstrip("/").replace("/", ".") for p in packages(ROOT)} <= shipped
