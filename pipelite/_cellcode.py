"""Static analysis of a block of source (a notebook cell): what it reads and what it binds."""
from __future__ import annotations

import ast
import getopt
import re
import symtable
from dataclasses import dataclass
from typing import Any

# Names a notebook host puts in every namespace, that no cell means as data. Names of the
# builtins are NOT here: a notebook may bind ``input`` or ``format`` itself, so whether a
# builtin-named read is the builtin or a global is decided when freshness is checked.
_HOST_NAMES = frozenset({"__builtins__", "__name__", "__file__", "get_ipython", "display",
                         "In", "Out", "exit", "quit"})
_SCOPES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef,
           ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)

# Magics whose argument is Python code run in the user namespace, with the options they take
# (as IPython parses them: getopt option strings). The code is analysed as if it were written
# in place. ``timeit`` runs its code inside a function: it reads globals but binds nothing.
_CODE_LINE_MAGICS = {"time": ("", ["no-raise-error"]), "timeit": ("n:r:tcp:qo", []),
                     "prun": ("D:l:rs:T:q", []), "debug": ("b:", ["breakpoint="])}
_CODE_CELL_MAGICS = {"time": ("", ["no-raise-error"]), "timeit": ("n:r:tcp:qo", []),
                     "prun": ("D:l:rs:T:q", []), "capture": ("", ["no-stderr", "no-stdout",
                                                                   "no-display"])}
_LOCAL_SCOPE_MAGICS = frozenset({"timeit"})
# Magics that change how output is shown, not what a cell computes.
_HARMLESS_MAGICS = frozenset({"matplotlib", "pinfo", "pinfo2"})


@dataclass(frozen=True)
class CellAnalysis:
    """What a cell reads and binds, from its code alone.

    ``free``: names the code may read from the namespace it runs in: names read before the
    code binds them, and names read where the code binds them only on some paths (those are
    also in ``maybe``). Names of builtins are kept: a notebook may shadow them, which only the
    namespace can tell. ``outputs``: names it binds at top level (minus imports, defs, classes
    and ``_private`` names), in order of first binding. ``bound``: every name it binds at top
    level. ``blind_spots``: what the code does that static analysis cannot follow (shell
    commands, magics), one description each, at ``blind_lines``.
    """

    free: tuple[str, ...]
    outputs: tuple[str, ...]
    defined: tuple[str, ...]
    imports: tuple[str, ...] = ()  # modules the code imports, anywhere in it
    maybe: tuple[str, ...] = ()
    bound: tuple[str, ...] = ()
    blind_spots: tuple[str, ...] = ()
    blind_lines: tuple[int, ...] = ()  # the line of each blind spot in the source


class _State:
    """Names bound on every path so far (``definite``) and on some path (``ever``)."""

    def __init__(self) -> None:
        self.definite: set[str] = set()
        self.ever: set[str] = set()


def analyze(source: str) -> CellAnalysis:
    """Analyze Python ``source`` (IPython-transformed); raise ``SyntaxError`` if it does not parse.

    Statements are followed in order. Control flow decides what is bound for sure: a name
    bound in an ``if`` without an ``else`` that binds it too, in a loop body, in a ``try``
    body or handler, in a ``match`` case or under ``contextlib.suppress`` is bound only maybe,
    and a later read of it may read the namespace's own value (it is in ``free`` and
    ``maybe``). A branch that ends in ``raise`` does not reach the code after it.
    Outputs are the names bound by assignments; loop and ``with`` targets, exception names
    and ``:=`` targets are bound but are not outputs (they are working names, not results).
    Magics that run code (``%time``, ``%timeit``, ``%prun``, ``%debug``; ``%%time``,
    ``%%timeit``, ``%%prun``, ``%%capture`` at the top of the cell) are analysed as that code;
    shell commands and other magics are blind spots.
    """
    tree = ast.parse(source)
    st = _State()
    free: list[str] = []
    maybe: list[str] = []
    outputs: list[str] = []
    defined: list[str] = []
    blind: list[str] = []
    blind_lines: list[int] = []
    imports: list[str] = []

    def read(names: list[str]) -> None:
        for name in names:
            if name in st.definite or name in _HOST_NAMES:
                continue
            if name not in free:
                free.append(name)
            if name in st.ever and name not in maybe:
                maybe.append(name)

    def bind(names: list[str], output: bool) -> None:
        for name in names:
            st.definite.add(name)
            st.ever.add(name)
            if output and not name.startswith("_") and name not in outputs:
                outputs.append(name)

    def expr(node: ast.AST | None, output: bool = False) -> None:
        """Evaluate ``node``: its magics, its reads, then what it binds (``:=``)."""
        if node is None:
            return
        magics(node)
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

    def magics(node: ast.AST) -> None:
        """Analyse the code that ``get_ipython()`` calls in ``node`` run, in place."""
        for call in _ipython_calls(node):
            method, args = call.func.attr, call.args  # type: ignore[attr-defined]
            consts = [a.value if isinstance(a, ast.Constant) and isinstance(a.value, str)
                      else None for a in args]
            shown = _shown(method, consts)
            if method in ("run_line_magic", "run_cell_magic") and consts and consts[0]:
                name = consts[0]
                if name in _HARMLESS_MAGICS and method == "run_line_magic":
                    continue
                table = _CODE_LINE_MAGICS if method == "run_line_magic" else _CODE_CELL_MAGICS
                if name in table and all(c is not None for c in consts[1:3]):
                    code = _magic_code(name, method, consts, table[name])
                    if code is not None:
                        snippets, binds_var = code
                        try:
                            parsed = [ast.parse(s) for s in snippets]
                        except SyntaxError:
                            parsed = None
                        if parsed is not None:
                            in_place(parsed, local=name in _LOCAL_SCOPE_MAGICS)
                            if binds_var:
                                bind([binds_var], output=False)
                            continue
            what = "a shell command" if method in ("system", "getoutput") else "a magic"
            blind.append(f"`{shown}` ({what}): PipeLite cannot see what it reads or changes")
            blind_lines.append(call.lineno)

    def in_place(trees: list[ast.Module], local: bool) -> None:
        if not local:
            for t in trees:
                block(t.body)
            return
        saved = (set(st.definite), set(st.ever), len(outputs), list(defined))
        for t in trees:
            block(t.body)
        st.definite, st.ever = saved[0], saved[1]
        del outputs[saved[2]:]
        defined[:] = saved[3]

    def block(stmts: list[ast.stmt]) -> bool:
        """Follow ``stmts``; True when they end in ``raise`` (the code after is not reached)."""
        for stmt in stmts:
            if statement(stmt):
                return True
        return False

    def branch(stmts: list[ast.stmt], start: set[str]) -> tuple[set[str], bool]:
        st.definite = set(start)
        ends = block(stmts)
        return st.definite, ends

    def merge(paths: list[tuple[set[str], bool]], start: set[str]) -> None:
        reached = [d for d, ends in paths if not ends]
        st.definite = set.intersection(*reached) if reached else set(start)

    def statement(stmt: ast.stmt) -> bool:
        if isinstance(stmt, (ast.Import, ast.ImportFrom)):
            for alias in stmt.names:
                if alias.name != "*":
                    name = (alias.asname or alias.name).split(".")[0]
                    bind([name], output=False)
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
            bind([stmt.name], output=False)
            if stmt.name not in defined:
                defined.append(stmt.name)
        elif isinstance(stmt, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            if isinstance(stmt, ast.AugAssign) and isinstance(stmt.target, ast.Name):
                read([stmt.target.id])
            expr(stmt.value)
            for t in (stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]):
                if stmt.value is not None or not isinstance(stmt, ast.AnnAssign):
                    target(t, output=True)
        elif isinstance(stmt, (ast.For, ast.AsyncFor, ast.While)):
            start = set(st.definite)
            if isinstance(stmt, ast.While):
                expr(stmt.test)
            else:
                expr(stmt.iter)
                target(stmt.target, output=False)
            block(stmt.body)  # may run no time at all: what it binds is bound maybe
            st.definite = set(start) | (st.definite if _always_true(stmt) else set())
            block(stmt.orelse)
            st.definite = set(start) | (st.definite if _always_true(stmt) else set())
        elif isinstance(stmt, ast.If):
            expr(stmt.test)
            start = set(st.definite)
            body = branch(stmt.body, start)
            orelse = branch(stmt.orelse, start)
            merge([body, orelse], start)
            return body[1] and orelse[1]
        elif isinstance(stmt, (ast.With, ast.AsyncWith)):
            start = set(st.definite)
            suppressing = False
            for item in stmt.items:
                expr(item.context_expr)
                suppressing = suppressing or _may_suppress(item.context_expr)
                if item.optional_vars is not None:
                    target(item.optional_vars, output=False)
            ends = block(stmt.body)
            if suppressing:  # the body may stop anywhere, and the code after it run
                st.definite = start
                return False
            return ends
        elif isinstance(stmt, ast.Try) or type(stmt).__name__ == "TryStar":
            tried: Any = stmt  # ast.Try, or ast.TryStar (3.11+) with the same fields
            start = set(st.definite)
            body = branch(tried.body, start)
            if not body[1]:
                body = branch(tried.orelse, body[0])
            paths = [body]
            for handler in tried.handlers:  # an exception may come before anything is bound
                st.definite = set(start)
                expr(handler.type)
                if handler.name:
                    bind([handler.name], output=False)
                paths.append(branch(handler.body, st.definite))
            merge(paths, start)
            ends = all(e for _, e in paths)
            return block(tried.finalbody) or ends
        elif type(stmt).__name__ == "Match":
            expr(stmt.subject)  # type: ignore[attr-defined]
            start = set(st.definite)
            paths = []
            for case in stmt.cases:  # type: ignore[attr-defined]
                st.definite = set(start)
                bind(_pattern_names(case.pattern), output=True)
                expr(case.guard)
                paths.append(branch(case.body, st.definite))
            cases = stmt.cases  # type: ignore[attr-defined]
            if not (cases and _irrefutable(cases[-1])):
                paths.append((set(start), False))  # no case matched
            merge(paths, start)
        elif isinstance(stmt, ast.Delete):
            for t in stmt.targets:
                if isinstance(t, ast.Name):
                    st.definite.discard(t.id)
                else:
                    expr(t)
        elif isinstance(stmt, ast.Raise):
            expr(stmt)
            return True
        else:
            expr(stmt)
        return False

    block(tree.body)
    # Names read inside functions, lambdas, classes and comprehensions are globals unless the
    # cell binds them itself: symtable knows the scoping rules.
    read([n for n in _nested_globals(source) if n not in st.definite])
    outputs = [o for o in outputs if o not in defined]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imports += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            imports.append(node.module)
    return CellAnalysis(tuple(free), tuple(outputs), tuple(defined),
                        tuple(dict.fromkeys(imports)), tuple(maybe), tuple(sorted(st.ever)),
                        tuple(blind), tuple(blind_lines))


def _ipython_calls(node: ast.AST) -> list[ast.Call]:
    """``get_ipython().METHOD(...)`` calls in ``node`` (what IPython makes of magics and
    ``!`` lines), in source order."""
    calls = []
    for n in ast.walk(node):
        if (isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
                and isinstance(n.func.value, ast.Call)
                and isinstance(n.func.value.func, ast.Name)
                and n.func.value.func.id == "get_ipython"):
            calls.append(n)
    return sorted(calls, key=lambda c: (c.lineno, c.col_offset))


def _shown(method: str, consts: list[str | None]) -> str:
    """The line as the user wrote it (near enough), from its transformed call."""
    first = consts[0] if consts else None
    if method in ("system", "getoutput"):
        return f"!{first or '...'}"
    if method == "run_line_magic":
        return f"%{first or '?'} {consts[1] if len(consts) > 1 and consts[1] else ''}".rstrip()
    if method == "run_cell_magic":
        return f"%%{first or '?'} {consts[1] if len(consts) > 1 and consts[1] else ''}".rstrip()
    return f"get_ipython().{method}(...)"


def _magic_code(name: str, method: str, consts: list[str | None],
                spec: tuple[str, list[str]]) -> tuple[list[str], str | None] | None:
    """The code a code-running magic runs (its options stripped, as IPython's
    ``parse_options`` does), and a name it binds itself (``%%capture VAR``); None if the
    options do not parse (the magic will refuse to run)."""
    line = consts[1] or ""
    shortopts, longopts = spec
    rest = _strip_options(line, shortopts, longopts)
    if rest is None and name == "time":  # IPython 8 takes no options: it is all code
        rest = line
    if rest is None:
        return None
    if method == "run_line_magic":
        return [rest], None
    cell = consts[2] if len(consts) > 2 and consts[2] is not None else ""
    if name == "capture":
        var = rest.strip()
        if var and not var.isidentifier():
            return None
        return [cell], var or None
    if name == "timeit":  # the rest of the line is setup code, run before the cell
        return [rest, cell], None
    return [cell], None


def _strip_options(line: str, shortopts: str, longopts: list[str]) -> str | None:
    tokens = line.split()
    try:
        _, args = getopt.getopt(tokens, shortopts, longopts)
    except getopt.GetoptError:
        return None
    consumed = len(tokens) - len(args)
    pos = 0
    for _ in range(consumed):
        m = re.compile(r"\s*\S+").match(line, pos)
        pos = m.end() if m else len(line)
    return line[pos:].strip()


def _always_true(loop: ast.stmt) -> bool:
    """``while True:``: its body runs at least once, up to where it breaks out."""
    return (isinstance(loop, ast.While) and isinstance(loop.test, ast.Constant)
            and bool(loop.test.value) and not any(isinstance(n, ast.Break)
                                                  for n in ast.walk(loop)))


def _may_suppress(node: ast.AST) -> bool:
    """A context manager known to swallow exceptions: ``suppress(...)``."""
    func = node.func if isinstance(node, ast.Call) else None
    name = (func.id if isinstance(func, ast.Name) else
            func.attr if isinstance(func, ast.Attribute) else "")
    return name == "suppress"


def _pattern_names(pattern: ast.AST) -> list[str]:
    names = []
    for n in ast.walk(pattern):
        for attr in ("name", "rest"):
            value = getattr(n, attr, None)
            if isinstance(value, str):
                names.append(value)
    return names


def _irrefutable(case: ast.AST) -> bool:
    pattern = case.pattern  # type: ignore[attr-defined]
    return (case.guard is None and type(pattern).__name__ == "MatchAs"  # type: ignore
            and pattern.pattern is None)


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


def definitions(source: str) -> list[ast.stmt]:
    """The top-level ``import``, ``def`` and ``class`` statements of ``source`` (with their
    decorators), in source order: what binds a cell's modules, functions and classes."""
    return [s for s in ast.parse(source).body
            if isinstance(s, (ast.Import, ast.ImportFrom, ast.FunctionDef,
                              ast.AsyncFunctionDef, ast.ClassDef))]


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
