"""``from stores import tables; tables.X`` reaches every public name of every stores.rows module,
and each name is defined in exactly one of them (the split kept one home per function)."""
import ast
import importlib
import inspect
import pkgutil

import stores.rows
from stores import tables


def _public(mod):
    """Names the module's own source defines at top level (not the ones it imports)."""
    tree = ast.parse(inspect.getsource(mod))
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names |= {t.id for t in node.targets if isinstance(t, ast.Name)}
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
    return {n for n in names if not n.startswith("_")}


def test_tables_reexports_every_public_name_of_the_row_modules():
    homes: dict[str, list[str]] = {}
    for info in pkgutil.iter_modules(stores.rows.__path__):
        mod = importlib.import_module(f"stores.rows.{info.name}")
        for name in _public(mod):
            homes.setdefault(name, []).append(info.name)
    assert len(homes) > 100
    missing = sorted(n for n in homes if getattr(tables, n, None) is not getattr(
        importlib.import_module(f"stores.rows.{homes[n][0]}"), n))
    assert missing == []
    assert {n: h for n, h in homes.items() if len(h) > 1} == {}


def test_dead_readers_are_gone():
    for name in ("run_has_contrasts", "czsl_text_counts"):
        assert not hasattr(tables, name)
