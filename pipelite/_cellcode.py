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
    """Analyze Python ``source``; raise ``SyntaxError`` if it does not parse.

    Statements are followed in order, into the bodies of ``for``, ``while``, ``if``, ``with``
    and ``try``: a name is free only if it is read before the code binds it. Outputs are the
    names bound by assignments; loop and ``with`` targets, exception names and ``:=`` targets
    are bound but are not outputs (they are working names, not results).
    """
    tree = ast.parse(source)
    bound: set[str] = set()
    free: list[str] = []
    outputs: list[str] = []
    defined: list[str] = []

    def read(names: list[str]) -> None:
        for name in names:
            if name not in bound and name not in free and name not in _BUILTINS:
                free.append(name)

    def bind(names: list[str], output: bool) -> None:
        for name in names:
            bound.add(name)
            if output and not name.startswith("_") and name not in outputs:
                outputs.append(name)

    def expr(node: ast.AST | None, output: bool = False) -> None:
        """Evaluate ``node``: its reads first, then what it binds (``:=``)."""
        if node is None:
            return
        loads: list[str] = []
        stores: list[str] = []
        _collect(node, loads, stores)
        read(loads)
        bind(stores, output)

    def target(node: ast.AST, output: bool) -> None:
        loads: list[str] = []
        stores: list[str] = []
        _collect(node, loads, stores)  # subscripts and attributes read their base
        read(loads)
        bind(stores, output)

    def block(stmts: list[ast.stmt]) -> None:
        for stmt in stmts:
            statement(stmt)

    def statement(stmt: ast.stmt) -> None:
        if isinstance(stmt, (ast.Import, ast.ImportFrom)):
            for alias in stmt.names:
                if alias.name != "*":
                    name = (alias.asname or alias.name).split(".")[0]
                    bound.add(name)
                    if name not in defined:
                        defined.append(name)
        elif isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            # decorators, defaults and bases are evaluated here; the body later
            outer = list(stmt.decorator_list)
            if isinstance(stmt, ast.ClassDef):
                outer += stmt.bases + [k.value for k in stmt.keywords]
            else:
                outer += stmt.args.defaults + [d for d in stmt.args.kw_defaults if d]
            for node in outer:
                expr(node)
            bound.add(stmt.name)
            if stmt.name not in defined:
                defined.append(stmt.name)
        elif isinstance(stmt, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            if isinstance(stmt, ast.AugAssign) and isinstance(stmt.target, ast.Name):
                read([stmt.target.id])
            expr(stmt.value)
            for t in (stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]):
                if stmt.value is not None or not isinstance(stmt, ast.AnnAssign):
                    target(t, output=True)
        elif isinstance(stmt, (ast.For, ast.AsyncFor)):
            expr(stmt.iter)
            target(stmt.target, output=False)
            block(stmt.body)
            block(stmt.orelse)
        elif isinstance(stmt, (ast.While, ast.If)):
            expr(stmt.test)
            block(stmt.body)
            block(stmt.orelse)
        elif isinstance(stmt, (ast.With, ast.AsyncWith)):
            for item in stmt.items:
                expr(item.context_expr)
                if item.optional_vars is not None:
                    target(item.optional_vars, output=False)
            block(stmt.body)
        elif isinstance(stmt, ast.Try) or type(stmt).__name__ == "TryStar":
            block(stmt.body)
            for handler in stmt.handlers:
                expr(handler.type)
                if handler.name:
                    bound.add(handler.name)
                block(handler.body)
            block(stmt.orelse)
            block(stmt.finalbody)
        else:
            expr(stmt)

    block(tree.body)
    # Names read inside functions, lambdas, classes and comprehensions are globals unless the
    # cell binds them itself: symtable knows the scoping rules.
    read([n for n in _nested_globals(source) if n not in bound])
    outputs = [o for o in outputs if o not in defined]
    imports: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imports += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            imports.append(node.module)
    return CellAnalysis(tuple(free), tuple(outputs), tuple(defined),
                        tuple(dict.fromkeys(imports)))


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
