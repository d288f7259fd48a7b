"""pipeline/explain: no import cycle among its modules, and no SQL text (issue 19)."""
from __future__ import annotations

import ast
import re
from pathlib import Path

PKG = Path(__file__).resolve().parents[2] / "pipeline" / "explain"


def _imports() -> dict[str, set[str]]:
    """{module: sibling modules it imports (at any level, inside functions too)}."""
    names = {p.stem for p in PKG.glob("*.py")}
    out = {}
    for p in PKG.glob("*.py"):
        deps = set()
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                if node.module in names:
                    deps.add(node.module)
                elif node.module is None:
                    deps |= {a.name for a in node.names if a.name in names}
        out[p.stem] = deps
    return out


def test_no_import_cycle_in_pipeline_explain():
    graph = _imports()
    state: dict[str, int] = {}
    cycles = []

    def visit(m, path):
        state[m] = 1
        for d in sorted(graph.get(m, ())):
            if state.get(d) == 1:
                cycles.append(path[path.index(d):] + [d] if d in path else [m, d])
            elif d not in state:
                visit(d, path + [d])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert cycles == []
    assert "resolve" in graph["compare"] and "explain" not in graph["compare"]  # shared lookups, not each other


def test_no_sql_text_in_pipeline_explain():
    sql = re.compile(r"\b(SELECT|INSERT|UPDATE|DELETE)\b[^\"']*\bFROM\b|information_schema")  # upper case: the code's SQL; hints to users are lower case
    bad = [f"{p.name}:{n}" for p in PKG.glob("*.py") for n, line in enumerate(p.read_text().splitlines(), 1)
           if sql.search(line) and not line.lstrip().startswith("#")]
    assert bad == []
