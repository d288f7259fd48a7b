"""No module outside ``pipeline/stages/methods/`` branches on a method's name.

An ``ast`` walk over ``pipeline/``, ``stores/`` and ``queries/`` (``pipeline/stages/methods/`` and the
tests excluded) flags a registered method name (a string literal equal to one) used as a
branch, by these rules:

1. **comparison**: an operand of ``==``, ``!=``, ``in``, ``not in`` (``is`` too), directly or as
   an element of a tuple/list/set literal operand: ``m == "lazsl"``, ``m in ("lazsl", "awt")``;
2. **match**: a ``case "lazsl":`` pattern;
3. **dict keyed by methods**: a dict literal whose keys are all method names (a dispatch table,
   ``{"lazsl": f, "awt": g}``);
4. **set of methods**: a module- or class-level name bound to a tuple/list/set literal whose
   elements are all method names, used as the right operand of ``in``/``not in`` in any
   scanned module (``SHORTLISTED = ("lazsl", "object-bound")`` ... ``method in SHORTLISTED``,
   also where the name was imported).

A literal passed as an argument (``class_prompt_matrix(cat, fp, PHOTO_PROMPTS)``, ``choices=``)
or a vocabulary that merely contains a method name among other words (export schemas
``("clip-benchmark", "dclip")``, faithfulness's rescorers ``{"global": ..., "lazsl": ...}``)
is not a branch on a method and is not flagged; the class-prompt template set that shares the
name "clip" is the constant ``pipeline.stages.attributes.PHOTO_PROMPTS``.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCANNED = ("pipeline", "stores", "queries")
EXCLUDED = ("pipeline/stages/methods/",)


def _strings(node: ast.AST) -> list[str]:
    """The string literal itself, or the string elements of a tuple/list/set literal."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return [e.value for e in node.elts if isinstance(e, ast.Constant) and isinstance(e.value, str)]
    return []


def _all_methods(node: ast.AST, names: set[str]) -> bool:
    """A tuple/list/set literal whose elements are all method-name strings."""
    if not isinstance(node, (ast.Tuple, ast.List, ast.Set)) or not node.elts:
        return False
    return all(isinstance(e, ast.Constant) and e.value in names for e in node.elts)


def method_sets(tree: ast.Module, names: set[str]) -> set[str]:
    """Rule 4's names: module/class-level names bound to a literal set of method names."""
    constants: set[str] = set()
    for scope in [tree] + [n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)]:
        for stmt in scope.body:
            targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target] if isinstance(
                stmt, ast.AnnAssign) and stmt.value is not None else []
            value = getattr(stmt, "value", None)
            if value is not None and _all_methods(value, names):
                constants |= {t.id for t in targets if isinstance(t, ast.Name)}
    return constants


def method_name_branches(tree: ast.Module, names: set[str], constants: set[str], path: str) -> list[str]:
    """Every place ``tree`` branches on a method name, as ``path:line: rule: literal``."""
    found: list[tuple[int, str, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            for operand in [node.left, *node.comparators]:
                found += [(node.lineno, "comparison", s) for s in _strings(operand) if s in names]
            for op, right in zip(node.ops, node.comparators):
                if isinstance(op, (ast.In, ast.NotIn)) and isinstance(right, ast.Name) and right.id in constants:
                    found.append((node.lineno, "set of methods", right.id))
        elif isinstance(node, ast.MatchValue):
            found += [(node.lineno, "match", s) for s in _strings(node.value) if s in names]
        elif isinstance(node, ast.Dict):
            keys = [k for k in node.keys if k is not None]
            if keys and all(isinstance(k, ast.Constant) and k.value in names for k in keys):
                found += [(node.lineno, "dict keyed by methods", k.value) for k in keys]
    return [f"{path}:{line}: {rule}: {text!r}" for line, rule, text in sorted(set(found))]


def scan_tree(root: Path, names: set[str]) -> list[str]:
    trees = {}
    for top in SCANNED:
        for p in sorted((root / top).rglob("*.py")):
            rel = p.relative_to(root).as_posix()
            if not rel.startswith(EXCLUDED):
                trees[rel] = ast.parse(p.read_text(encoding="utf-8"), filename=rel)
    constants = set().union(*(method_sets(t, names) for t in trees.values()))
    return [hit for rel, t in trees.items() for hit in method_name_branches(t, names, constants, rel)]


@pytest.fixture(scope="module")
def names() -> set[str]:
    from pipeline.stages.methods import method_names

    return set(method_names())


def test_no_module_outside_the_registry_branches_on_a_method_name(names):
    assert {"lazsl", "clip", "czsl-local", "best-region"} <= names
    assert scan_tree(ROOT, names) == []


PLANTED = '''
SHORTLISTED = ("lazsl", "object-bound")
EXPORT_FORMATS = ("clip-benchmark", "dclip")          # a vocabulary, not a set of methods
SCORERS = {"global": 1, "lazsl": 2}                   # likewise

def f(method, fmt, m):
    prompts = table(cat, "clip")                      # an argument: a template set name
    if method == "lazsl":
        pass
    if fmt in EXPORT_FORMATS or m.kind == "crop":
        pass
    if method in SHORTLISTED:
        pass
    run = {"awt": 1, "dclip": 2}[method]
    if m not in ["wca", "other"]:
        pass
    match method:
        case "object-bound":
            pass
'''


def test_planted_violations_in_a_fixture_tree_are_each_found(tmp_path, names):
    (tmp_path / "pipeline" / "stages" / "methods").mkdir(parents=True)
    (tmp_path / "stores").mkdir()
    (tmp_path / "queries").mkdir()
    (tmp_path / "pipeline" / "stages" / "bad.py").write_text(PLANTED)
    (tmp_path / "pipeline" / "stages" / "methods" / "fine.py").write_text(PLANTED)  # the registry may name methods
    (tmp_path / "queries" / "clean.py").write_text('X = ("clip", "paper")\ndef g(t):\n    return t == "paper"\n')
    (tmp_path / "stores" / "user.py").write_text("from pipeline.stages.bad import SHORTLISTED\n\n"
                                                 "def h(m):\n    return m not in SHORTLISTED\n")
    assert scan_tree(tmp_path, names) == [
        "pipeline/stages/bad.py:8: comparison: 'lazsl'",
        "pipeline/stages/bad.py:12: set of methods: 'SHORTLISTED'",
        "pipeline/stages/bad.py:14: dict keyed by methods: 'awt'",
        "pipeline/stages/bad.py:14: dict keyed by methods: 'dclip'",
        "pipeline/stages/bad.py:15: comparison: 'wca'",
        "pipeline/stages/bad.py:18: match: 'object-bound'",
        "stores/user.py:4: set of methods: 'SHORTLISTED'",  # imported from another module
    ]
