"""Static analysis of a block of source (a notebook cell): what it reads and what it binds."""
from __future__ import annotations

import ast
import builtins
import symtable
from dataclasses import dataclass

_BUILTINS = frozenset(dir(builtins)) | {"__builtins__", "__name__", "__file__", "get_ipython",
                                         "display", "In", "Out", "exit", "quit"}
_SCOPES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef,
           ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)


@dataclass(frozen=True)
class CellAnalysis:
    """``free``: names read before the code binds them; ``outputs``: names it binds at top level
    (minus imports, defs, classes and ``_private`` names), in order of first binding."""

    free: tuple[str, ...]
    outputs: tuple[str, ...]
    defined: tuple[str, ...]
    imports: tuple[str, ...] = ()  # modules the code imports, anywhere in it


def analyze(source: str) -> CellAnalysis:
    """Analyze Python ``source``; raise ``SyntaxError`` if it does not parse."""
    tree = ast.parse(source)
    bound: set[str] = set()
    free: list[str] = []
    outputs: list[str] = []
    defined: list[str] = []

    def read(name: str) -> None:
        if name not in bound and name not in free and name not in _BUILTINS:
            free.append(name)

    for stmt in tree.body:
        loads, stores, defs = _top_level_names(stmt)
        for n in loads:
            read(n)
        for n in defs:
            bound.add(n)
            if n not in defined:
                defined.append(n)
        for n in stores:
            bound.add(n)
            if not n.startswith("_") and n not in outputs:
                outputs.append(n)
    # Names read inside functions, lambdas, classes and comprehensions are globals unless the
    # cell binds them itself: symtable knows the scoping rules.
    for name in _nested_globals(source):
        if name not in bound:
            read(name)
    outputs = [o for o in outputs if o not in defined]
    imports: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imports += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            imports.append(node.module)
    return CellAnalysis(tuple(free), tuple(outputs), tuple(defined),
                        tuple(dict.fromkeys(imports)))


def _top_level_names(stmt: ast.stmt) -> tuple[list[str], list[str], list[str]]:
    """Names loaded and stored by ``stmt`` outside nested scopes; defs/imports apart."""
    loads: list[str] = []
    stores: list[str] = []
    defs: list[str] = []
    if isinstance(stmt, (ast.Import, ast.ImportFrom)):
        for alias in stmt.names:
            if alias.name != "*":
                defs.append((alias.asname or alias.name).split(".")[0])
        return loads, stores, defs
    if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        defs.append(stmt.name)
        # decorators, defaults and bases are evaluated at top level
        outer = list(stmt.decorator_list)
        if isinstance(stmt, ast.ClassDef):
            outer += stmt.bases + [k.value for k in stmt.keywords]
        else:
            outer += stmt.args.defaults + [d for d in stmt.args.kw_defaults if d is not None]
        for node in outer:
            _collect(node, loads, stores)
        return loads, stores, defs
    if isinstance(stmt, ast.AugAssign) and isinstance(stmt.target, ast.Name):
        loads.append(stmt.target.id)
    # evaluate the right-hand side before the targets, as Python does
    if isinstance(stmt, (ast.Assign, ast.AnnAssign, ast.AugAssign)) and stmt.value is not None:
        _collect(stmt.value, loads, stores)
        targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
        for t in targets:
            _collect(t, loads, stores)
        return loads, stores, defs
    _collect(stmt, loads, stores)
    return loads, stores, defs


def _collect(node: ast.AST, loads: list[str], stores: list[str]) -> None:
    stack = [node]
    while stack:
        n = stack.pop()
        if isinstance(n, _SCOPES):
            if isinstance(n, (ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)):
                # the first iterable is evaluated in the enclosing scope
                stack.append(n.generators[0].iter)
            continue
        if isinstance(n, ast.Name):
            (stores if isinstance(n.ctx, (ast.Store, ast.Del)) else loads).append(n.id)
        elif isinstance(n, ast.NamedExpr) and isinstance(n.target, ast.Name):
            stores.append(n.target.id)
            stack.append(n.value)
            continue
        stack.extend(reversed(list(ast.iter_child_nodes(n))))


def _nested_globals(source: str) -> list[str]:
    names: list[str] = []
    top = symtable.symtable(source, "<cell>", "exec")
    stack = list(top.get_children())
    while stack:
        table = stack.pop()
        for sym in table.get_symbols():
            # free (non-global) names belong to an enclosing function, not to the module
            if sym.is_referenced() and sym.is_global() and sym.get_name() not in names:
                names.append(sym.get_name())
        stack.extend(table.get_children())
    return names


def normalize_source(source: str) -> str:
    """Source reduced to its syntax tree: comments, blank lines, line positions and docstrings
    do not survive."""
    tree = ast.parse(source)
    _strip_docstrings(tree)
    return ast.dump(tree, annotate_fields=False, include_attributes=False)


def _strip_docstrings(tree: ast.AST) -> None:
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            body = node.body
            if (body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
                    and isinstance(body[0].value.value, str)):
                node.body = body[1:] or [ast.Pass()]
