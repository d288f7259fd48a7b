"""The layering rules of docs/architecture.md, checked by walking the source with ``ast``.

Every function takes the root of a source tree (the repository, or a planted fixture tree in
the tests) and returns the violations it finds as one-line strings, so a test can both check
the real tree and show that each rule fails on a planted violation.

* :func:`queries_imports`: ``queries/`` is pure math; it imports neither ``stores`` nor ``pipeline``.
* :func:`execute_outside_stores`: ``.execute(`` (SQL) is called only inside ``stores/`` (and the
  sandboxed ``pipeline/sql.py`` of ``pipeline sql``).
* :func:`import_cycles`: no cycle between modules, counting module-level and function-level
  imports (an ``if TYPE_CHECKING:`` import never runs and does not count).
* :func:`heavy_at_startup`: no module that ``pipeline --help`` or ``pipeline sql`` imports
  imports a heavy library at module level.
"""
from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

PACKAGES = ("pipeline", "stores", "queries")
#: libraries that cost tenths of a second (or hundreds of MB) to import
HEAVY = ("torch", "torchvision", "open_clip", "faiss", "matplotlib", "ray", "PIL", "scipy", "ot", "numpy", "pyarrow",
         "pandas", "openai", "pytorch_grad_cam", "quantus", "jinja2", "tqdm", "pydantic", "huggingface_hub")
#: what ``pipeline --help`` and ``pipeline sql`` import first (the console script's module, the sql stage)
STARTUP_MODULES = ("pipeline.cli", "pipeline.sql")
#: where SQL may be executed outside stores/: the sandbox of `pipeline sql`
SQL_ALLOWED = ("pipeline/sql.py",)


@dataclass(frozen=True)
class Import:
    source: str  # importing module, dotted
    target: str  # imported module (a project module where one matches, else the name as written)
    line: int
    in_function: bool
    path: str  # of the importing file, relative to the root
    function: str | None = None  # the module-level function it sits in


def modules(root: Path) -> dict[str, tuple[Path, bool]]:
    """dotted module name -> (file, is a package ``__init__``) for every module of the packages."""
    out = {}
    for pkg in PACKAGES:
        base = root / pkg
        if not base.is_dir():
            continue
        for path in sorted(base.rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            is_pkg = parts[-1] == "__init__"
            out[".".join(parts[:-1] if is_pkg else parts)] = (path, is_pkg)
    return out


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


def _targets(mod: str, is_pkg: bool, node: ast.Import | ast.ImportFrom, known: dict) -> list[str]:
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if node.level:
        base = mod.split(".") if is_pkg else mod.split(".")[:-1]
        base = base[: len(base) - (node.level - 1)]
        target = ".".join(base + ([node.module] if node.module else []))
    else:
        target = node.module or ""
    return [f"{target}.{a.name}" if f"{target}.{a.name}" in known else target for a in node.names]


def imports(root: Path) -> list[Import]:
    """Every executed import statement of the packages (``if TYPE_CHECKING:`` blocks left out)."""
    root = Path(root)
    known = modules(root)
    out: list[Import] = []
    for mod, (path, is_pkg) in known.items():
        rel = path.relative_to(root).as_posix()

        def walk(node: ast.AST, in_function: bool, function: str | None) -> None:
            for child in ast.iter_child_nodes(node):
                if isinstance(child, ast.If) and _is_type_checking(child):
                    for sub in child.orelse:
                        walk(sub, in_function, function)
                    continue
                if isinstance(child, (ast.Import, ast.ImportFrom)):
                    for t in _targets(mod, is_pkg, child, known):
                        out.append(Import(mod, t, child.lineno, in_function, rel, function))
                is_fn = isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
                top = child.name if is_fn and not in_function and not isinstance(child, ast.Lambda) else function
                walk(child, in_function or is_fn, top)

        walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)), False, None)
    return out


def _top(name: str) -> str:
    return name.split(".")[0]


def queries_imports(root: Path) -> list[str]:
    return [f"{i.path}:{i.line}: queries imports {i.target} (queries/ is pure math: arrays in, arrays out)"
            for i in imports(root) if _top(i.source) == "queries" and _top(i.target) in ("pipeline", "stores")]


def execute_outside_stores(root: Path) -> list[str]:
    root = Path(root)
    out = []
    for mod, (path, _) in modules(root).items():
        rel = path.relative_to(root).as_posix()
        if _top(mod) == "stores" or rel in SQL_ALLOWED:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "execute":
                out.append(f"{rel}:{node.lineno}: .execute( outside stores/ (add a function to stores/ instead)")
    return out


def import_graph(root: Path) -> dict[str, set[str]]:
    known = modules(Path(root))
    graph: dict[str, set[str]] = {m: set() for m in known}
    for i in imports(root):
        if i.target in known and i.target != i.source:
            graph[i.source].add(i.target)
    return graph


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm, iteratively; components of more than one module, sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                comp = []
                while True:
                    m = stack.pop()
                    on_stack.discard(m)
                    comp.append(m)
                    if m == node:
                        break
                if len(comp) > 1:
                    found.append(sorted(comp))
    return sorted(found)


def import_cycles(root: Path) -> list[list[str]]:
    """Each import cycle as the sorted modules of one strongly connected component."""
    return strongly_connected(import_graph(root))


def _package_of(module: str) -> str:
    """``stores`` and ``queries`` are one package each; ``pipeline`` is its subpackages
    (``pipeline.stages``) and its top-level modules (``pipeline.config``), each on its own."""
    parts = module.split(".")
    return ".".join(parts[:2]) if parts[0] == "pipeline" else parts[0]


def package_cycles(root: Path) -> list[list[str]]:
    """Cycles between packages (``pipeline.stages`` <-> ``pipeline.engines``, ``stores`` <->
    ``pipeline.config``); a package importing itself is no cycle."""
    graph: dict[str, set[str]] = {}
    for src, targets in import_graph(root).items():
        a = _package_of(src)
        graph.setdefault(a, set())
        for t in targets:
            b = _package_of(t)
            if b != a:
                graph[a].add(b)
    return strongly_connected(graph)


def _called_at_import(root: Path, known: dict) -> dict[str, set[str]]:
    """module -> its module-level functions that its own body calls while it is imported
    (``_register()`` at the bottom of a package ``__init__``): their imports run at import time."""
    out: dict[str, set[str]] = {}
    for mod, (path, _) in known.items():
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            call = node.value if isinstance(node, (ast.Expr, ast.Assign)) else None
            if isinstance(call, ast.Call) and isinstance(call.func, ast.Name):
                out.setdefault(mod, set()).add(call.func.id)
    return out


def startup_closure(root: Path, entries=STARTUP_MODULES) -> dict[str, str]:
    """module -> the module that first imported it, for every project module that importing
    ``entries`` runs: module-level imports, followed transitively, and the package ``__init__``
    of every imported module."""
    known = modules(Path(root))
    called = _called_at_import(Path(root), known)
    level: dict[str, list[str]] = {}
    for i in imports(root):
        if not i.in_function or i.function in called.get(i.source, ()):
            level.setdefault(i.source, []).append(i.target)
    seen: dict[str, str] = {}
    todo = [(e, "(entry)") for e in entries if e in known]
    while todo:
        mod, why = todo.pop()
        if mod in seen:
            continue
        seen[mod] = why
        parts = mod.split(".")
        for k in range(1, len(parts)):
            parent = ".".join(parts[:k])
            if parent in known:
                todo.append((parent, mod))
        for t in level.get(mod, ()):
            if t in known:
                todo.append((t, mod))
    return seen


def heavy_at_startup(root: Path, entries=STARTUP_MODULES, heavy=HEAVY) -> list[str]:
    closure = startup_closure(root, entries)
    out = []
    called = _called_at_import(Path(root), modules(Path(root)))
    for i in imports(root):
        runs_at_import = not i.in_function or i.function in called.get(i.source, ())
        if i.source in closure and runs_at_import and _top(i.target) in heavy:
            out.append(f"{i.path}:{i.line}: {i.target} imported at module level by {i.source}, which "
                       f"`pipeline --help`/`pipeline sql` import (via {closure[i.source]}); import it inside the "
                       "function that uses it")
    return out



def heavy_libraries(root: Path, heavy=HEAVY) -> dict[str, set[str]]:
    """module -> the heavy libraries importing it loads (its module-level imports, followed,
    and the package ``__init__`` of each module imported)."""
    known = modules(Path(root))
    edges: dict[str, set[str]] = {m: set() for m in known}
    libs: dict[str, set[str]] = {m: set() for m in known}
    for i in imports(root):
        if i.in_function:
            continue
        if _top(i.target) in heavy:
            libs[i.source].add(_top(i.target))
        elif i.target in known:
            edges[i.source].add(i.target)
    for m in known:
        parts = m.split(".")
        edges[m].update(".".join(parts[:k]) for k in range(1, len(parts)) if ".".join(parts[:k]) in known)
    changed = True
    while changed:
        changed = False
        for m, targets in edges.items():
            for t in targets:
                if not libs[t] <= libs[m]:
                    libs[m] |= libs[t]
                    changed = True
    return libs


def needless_deferrals(root: Path, heavy=HEAVY) -> list[str]:
    """Function-level imports that defer no heavy library the importing module does not load
    already: they belong at module level (an import inside a function is for deferring a heavy
    library, not for hiding an import cycle)."""
    known = modules(Path(root))
    libs = heavy_libraries(root, heavy)
    out = []
    for i in imports(root):
        if not i.in_function:
            continue
        wanted = {_top(i.target)} & set(heavy) if i.target not in known else libs[i.target]
        if not wanted - libs[i.source]:
            out.append(f"{i.path}:{i.line}: {i.target} defers nothing heavy that {i.source} does not load: "
                       "import it at module level")
    return out


MARK = "# heavy: imported on use"


def unmarked_deferrals(root: Path) -> list[str]:
    """Function-level imports without the ``# heavy: imported on use`` comment on the line above
    their group (consecutive import statements) or on their own first line."""
    root = Path(root)
    lines_by_path: dict[str, set[int]] = {}
    for i in imports(root):
        if i.in_function:
            lines_by_path.setdefault(i.path, set()).add(i.line)
    out = []
    for rel, wanted in sorted(lines_by_path.items()):
        text = (root / rel).read_text(encoding="utf-8")
        lines = text.split("\n")
        for node in ast.walk(ast.parse(text)):
            for field in ("body", "orelse", "finalbody"):
                body = getattr(node, field, None)
                if not isinstance(body, list):
                    continue
                group_start = None
                for st in body:
                    if isinstance(st, (ast.Import, ast.ImportFrom)) and st.lineno in wanted:
                        group_start = group_start or st.lineno
                        marked = any("heavy:" in lines[k - 1] for k in (group_start - 1, group_start, st.lineno) if k >= 1)
                        if not marked:
                            out.append(f"{rel}:{st.lineno}: import inside a function without `{MARK}`")
                    else:
                        group_start = None
    return sorted(set(out))
