"""``from stores import tables; tables.X`` reaches every public name of every stores.rows module,
and each name is defined in exactly one of them (the split kept one home per function)."""
import importlib
import inspect
import pkgutil

import stores.rows
from stores import tables


def _public(mod):
    return {n for n, v in vars(mod).items() if not n.startswith("_") and not inspect.ismodule(v)
            and getattr(v, "__module__", mod.__name__) == mod.__name__}


def test_tables_reexports_every_public_name_of_the_row_modules():
    homes: dict[str, list[str]] = {}
    for info in pkgutil.iter_modules(stores.rows.__path__):
        mod = importlib.import_module(f"stores.rows.{info.name}")
        for name in _public(mod) - {"annotations", "TYPE_CHECKING"}:
            if callable(getattr(mod, name)) or name.isupper():
                homes.setdefault(name, []).append(info.name)
    assert len(homes) > 100
    missing = sorted(n for n in homes if getattr(tables, n, None) is not getattr(
        importlib.import_module(f"stores.rows.{homes[n][0]}"), n))
    assert missing == []
    assert {n: h for n, h in homes.items() if len(h) > 1} == {}


def test_dead_readers_are_gone():
    for name in ("run_has_contrasts", "czsl_text_counts"):
        assert not hasattr(tables, name)
