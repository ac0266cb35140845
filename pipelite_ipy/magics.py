"""``%%stage`` and ``%pipelite``: notebook cells as cached pipeline stages."""
from __future__ import annotations

import ast
import html
import inspect
import os
from typing import Any, Callable, Sequence

from IPython.core.error import UsageError
from IPython.core.magic import Magics, cell_magic, line_magic, magics_class
from IPython.core.magic_arguments import (
    MagicArgumentParser,
    argument,
    magic_arguments,
    parse_argstring,
)
from IPython.display import display
from IPython.utils.process import arg_split

from pipelite import InvalidArgumentError, PipeliteError, StageStatus, Store
from pipelite.present import (
    STATE_COLOURS,
    human_bytes,
    human_duration,
    local_time,
    parse_duration,
    status_table,
    user_frames,
)
from pipelite.store import check_store_location, parse_location, parse_storage_options

from .cell import CellSyntaxError
from .session import PipeliteSession, _cell_names

__all__ = ["PipeliteMagics", "StageCellAwaiter", "StatusTable"]


def _pipelite_parser() -> MagicArgumentParser:
    parser = MagicArgumentParser(prog="pipelite", description="Inspect and run the pipeline.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=MagicArgumentParser)

    def add(name: str, help: str) -> MagicArgumentParser:
        return sub.add_parser(name, help=help, description=help, prog=f"pipelite {name}")

    p = add("run", "run stages that are not fresh (all when no NAME) and bind their outputs")
    p.add_argument("names", nargs="*", metavar="NAME", help="stages to run")
    p.add_argument("--force", action="store_true", help="recompute the named stages themselves")
    p.add_argument("--dry-run", action="store_true", help="say what would run, run nothing")
    add("status", "every stage, its state, outputs, last run and why it is not fresh")
    p = add("explain", "why a stage is in its state, in words")
    p.add_argument("name", metavar="NAME")
    p = add("graph", "the stage graph, coloured by state")
    p.add_argument("--format", choices=("mermaid", "dot", "svg"), default="mermaid",
                   help="mermaid (rendered by JupyterLab), dot text, or svg (needs Graphviz)")
    p.add_argument("--artifacts", action="store_true",
                   help="draw every artifact as a node (default: stages only, edges labelled "
                        "with the artifacts they carry)")
    p = add("load", "bind stored artifacts (or all outputs of a stage) into the namespace")
    p.add_argument("names", nargs="+", metavar="NAME", help="artifact or stage names")
    p = add("invalidate", "forget every stored result of a stage")
    p.add_argument("name", metavar="NAME")
    p = add("accept", "adopt a stage's stored result for its changed code, globals or "
                      "parameters, without running it")
    p.add_argument("name", metavar="NAME")
    p = add("gc", "delete all but the newest results per stage, results unused for --max-age, "
                  "the least recently used beyond --max-size, and unreferenced files")
    p.add_argument("--keep", type=int, default=1, metavar="N",
                   help="results to keep per stage (default 1)")
    p.add_argument("--max-size", metavar="SIZE",
                   help="delete the least recently used results until the store's objects "
                        "take at most SIZE (e.g. 20GiB, 500MB)")
    p.add_argument("--max-age", metavar="AGE",
                   help="delete results not loaded or reused for AGE (e.g. 30d, 12h)")
    p = add("store", "show the store, or switch to the store at PATH")
    p.add_argument("path", nargs="?", metavar="PATH", help="a directory or an fsspec URL")
    p.add_argument("--option", dest="options", action="append", metavar="KEY=VALUE",
                   help="an fsspec storage option (repeat it; client_kwargs.endpoint_url=... "
                        "nests)")
    add("panel", "show the interactive pipeline panel (ipywidgets)")
    return parser


_PARSER = _pipelite_parser()


def _subparsers() -> dict[str, MagicArgumentParser]:
    """``%pipelite``'s commands and their parsers."""
    action = next(a for a in _PARSER._actions if a.dest == "command")
    assert isinstance(action.choices, dict)
    return action.choices


_COMMANDS = tuple(_subparsers())


def _usage(parser: MagicArgumentParser) -> str:
    return parser.format_usage().replace("::", "").strip()


def _help_text() -> str:
    lines = ["Commands:"]
    for p in _subparsers().values():
        lines.append("")
        lines.append("  " + _usage(p))
        lines.append("      " + (p.description or ""))
        for action in p._actions:
            if action.option_strings and action.help:
                lines.append(f"      {', '.join(action.option_strings):<12} {action.help}")
    return "\n".join(lines)


def _unquoted(text: str) -> str:
    """IPython splits magic lines without removing quotes: ``'my store'`` means my store."""
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    return text


def _present(exc: BaseException, shell: Any) -> None:
    """Make IPython show ``exc`` as the user needs it: a PipeLite error as one line, an error
    in the user's code with the user's frames only (IPython shows ``_render_traceback_()``)."""
    shown: Any = exc  # any exception object: IPython looks the method up on the instance
    if isinstance(exc, CellSyntaxError):
        err = exc.error
        shown._render_traceback_ = lambda: shell.SyntaxTB.structured_traceback(
            type(err), err, [])
        return
    if isinstance(exc, PipeliteError):
        line = f"{type(exc).__name__}: {exc}"
        shown._render_traceback_ = lambda: [line]
        return
    if isinstance(exc, (UsageError, SyntaxError)) or not isinstance(exc, (Exception,
                                                                          KeyboardInterrupt)):
        return

    def render() -> list[str]:
        tb = user_frames(exc.__traceback__)
        stb = shell.InteractiveTB.structured_traceback(type(exc), exc, tb, tb_offset=0)
        # older IPythons do not show PEP 678 notes, where PipeLite says nothing was stored
        shown = "\n".join(stb[-2:])
        # a note may name a notebook cell by its file (a worker's frames): as IPython does
        return stb + [_cell_names(shell, n) for n in getattr(exc, "__notes__", ())
                      if n not in shown]

    try:
        shown._render_traceback_ = render
    except (AttributeError, TypeError):  # an exception type that takes no attributes
        pass


_NOWRAP = ' style="white-space:nowrap"'  # a date or a duration is never broken across lines


class StatusTable:
    """``%pipelite status``: the stages as a plain-text and an HTML table."""

    def __init__(self, statuses: Sequence[StageStatus]):
        self.statuses = list(statuses)

    def __repr__(self) -> str:
        return status_table(self.statuses) if self.statuses else "no stages yet"

    def _repr_html_(self) -> str:
        if not self.statuses:
            return "<p>no stages yet</p>"
        rows = []
        for s in self.statuses:
            fill, stroke = STATE_COLOURS.get(s.state, STATE_COLOURS["missing"])
            badge = (f'<span style="background:{fill};border:1px solid {stroke};color:#000;'
                     f'border-radius:4px;padding:0 6px">{s.state}</span>')
            outs = ", ".join(f"{html.escape(o.name)} ({human_bytes(o.size)})" for o in s.outputs)
            rows.append(
                "<tr>"
                f"<td><code>{html.escape(s.name)}</code>{'' if s.defined else ' *'}</td>"
                f"<td>{badge}</td>"
                f"<td{_NOWRAP}>{local_time(s.last_run)}</td>"
                f"<td{_NOWRAP}>"
                f"{human_duration(s.duration) if s.duration is not None else '-'}</td>"
                f"<td>{outs or '-'}</td>"
                f"<td>{html.escape('; '.join(s.reasons)) or '-'}</td>"
                "</tr>"
            )
        foot = ("<p><small>* known from the store only (not defined in this session)</small></p>"
                if any(not s.defined for s in self.statuses) else "")
        head = "".join(f'<th style="text-align:left">{h}</th>'
                       for h in ("stage", "state", "last run", "took", "outputs", "why"))
        return ('<table class="pipelite-status" style="text-align:left">'
                f"<thead><tr>{head}</tr></thead>"
                f"<tbody>{''.join(rows)}</tbody></table>{foot}")


def _cell_options(args: Any) -> dict[str, Any]:
    """``%%stage``'s file and policy flags as ``CellStage`` options; bad ones a usage
    message."""
    options: dict[str, Any] = {"files": [_unquoted(f) for f in args.files or ()],
                               "out_files": {}, "cache": not args.no_cache,
                               "ignore": list(args.ignore or ())}
    for item in args.out_files or ():
        item = _unquoted(item)
        name, eq, path = item.partition("=")
        if not eq:
            name, path = _artifact_of_path(item), item
        if not name.isidentifier() or not path:
            raise UsageError(f"%%stage --out-file {item}: give PATH or NAME=PATH, NAME a "
                             f"Python identifier (e.g. --out-file report=out/report.html)")
        if name in options["out_files"]:
            raise UsageError(f"%%stage --out-file: two files are named '{name}': give each "
                             f"a name (NAME=PATH)")
        options["out_files"][name] = path
    bad = [n for n in options["ignore"] if not n.isidentifier()]
    if bad:
        raise UsageError(f"%%stage --ignore {bad[0]}: give the names of globals the cell reads")
    if args.expires is not None:
        try:
            options["expires_after"] = parse_duration(_unquoted(args.expires), "--expires")
        except PipeliteError as exc:
            raise UsageError(f"%%stage: {exc}") from None
    if args.no_cache and args.expires is not None:
        raise UsageError("%%stage: use --no-cache or --expires, not both (a cell that is "
                         "never stored cannot expire)")
    return options


def _artifact_of_path(path: str) -> str:
    """``out/report.html`` -> ``report``: a file's name without its extension, as an
    identifier."""
    import re

    stem = os.path.splitext(os.path.basename(path.rstrip("/\\")))[0]
    name = re.sub(r"\W", "_", stem).strip("_")
    # "1.csv" or "_x.csv": not "_1" (IPython's output history) nor a _private name (never an
    # output)
    return f"file_{name}" if not name or name[0].isdigit() else name


@magics_class
class PipeliteMagics(Magics):
    """The ``%%stage`` cell magic and the ``%pipelite`` line magic."""

    def __init__(self, shell: Any, session: PipeliteSession):
        super().__init__(shell)
        self.session = session

    def _guarded(self, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except BaseException as exc:
            _present(exc, self.shell)
            raise

    # -- %%stage -----------------------------------------------------------------------------
    @magic_arguments()
    @argument("name", help="the stage's name: letters, digits, '_' and '-'")
    @argument("-o", "--output", dest="outputs", nargs="+", action="extend", metavar="OUT",
              help="the artifacts the cell produces (default: the names it binds at top "
                   "level, minus imports, defs and _private names)")
    @argument("-i", "--input", dest="inputs", nargs="+", action="extend", metavar="IN",
              help="the artifacts the cell reads (default: its free names that other stages "
                   "produce)")
    @argument("--env", nargs="+", action="extend", metavar="VAR",
              help="environment variables the cell's result depends on (a change makes it "
                   "stale; only a digest of each value is stored)")
    @argument("--file", dest="files", nargs="+", action="extend", metavar="PATH",
              help="files or folders the cell reads, tracked by content (a change makes it "
                   "stale, naming the file)")
    @argument("--out-file", dest="out_files", nargs="+", action="extend",
              metavar="[NAME=]PATH",
              help="a file the cell writes, stored as artifact NAME (default: the file's "
                   "name without its extension) and put back in place on a hit")
    @argument("--no-cache", action="store_true",
              help="run the cell every time; store nothing (downstream cells still see its "
                   "outputs by content)")
    @argument("--expires", metavar="AGE",
              help="a stored result older than AGE (30min, 12h, 1d, 2w) is stale")
    @argument("--ignore", nargs="+", action="extend", metavar="NAME",
              help="globals the cell reads that do not affect its result (left out of its "
                   "fingerprint)")
    @argument("--force", action="store_true", help="recompute even if a stored result is fresh")
    @argument("--define", action="store_true", help="register the stage without running it")
    @cell_magic
    def stage(self, line: str, cell: str) -> None:
        """Make this cell a pipeline stage: run it once, then load its results from the store.

        When the stage is fresh (same code, helpers, globals and inputs as a stored result),
        its outputs are loaded into the namespace (numpy arrays read-only and memory-mapped)
        and its printed output, displays and plots are replayed, and its top-level imports,
        defs and classes are run again. Otherwise stale upstream stages run first, then the
        cell, and its results are stored. ``%time``/``%timeit``/``%prun`` lines count as the
        code they run; shell commands and other magics are blind spots (a PipeliteWarning).

        Example::

            %%stage train_model -o model_weights
            model_weights = train_data.mean(axis=0) * EPOCHS
        """
        args = self._stage_arguments(line)

        def run() -> None:
            name = self._define_stage(args, line, cell)
            if name is not None:
                self.session.run_cell_stage(name, force=args.force)

        self._guarded(run)

    async def stage_awaiting(self, line: str, cell: str) -> None:
        """``%%stage`` for a cell with a top-level ``await``, as a coroutine that IPython
        awaits in its running event loop (``StageCellAwaiter`` rewrites such a cell into a
        call of this): the cell's code runs in that loop, the kernel's in Jupyter."""
        args = self._stage_arguments(line)
        try:
            name = self._define_stage(args, line, cell)
            if name is not None:
                await self.session.run_cell_stage_async(name, force=args.force)
        except BaseException as exc:
            _present(exc, self.shell)
            raise

    def _stage_arguments(self, line: str) -> Any:
        args = parse_argstring(self.stage, line)
        if args.force and args.define:
            raise UsageError("%%stage: use --force or --define, not both")
        return args

    def _define_stage(self, args: Any, line: str, cell: str) -> str | None:
        """Register the cell as a stage; its name to run it, or None (``--define``)."""
        shell: Any = self.shell
        source = shell.transform_cell(cell)
        header = f"%%stage {line}".rstrip()
        options = _cell_options(args)
        st = self.session.define_cell(args.name, header, source, args.inputs, args.outputs,
                                      env=args.env, **options)
        self.session.show_badge(st.name, "missing" if args.define else "running")
        if args.define:
            ins = ", ".join(st.inputs) or "none"
            outs = ", ".join(st.outputs or ()) or "none"
            print(f"[pipelite] {st.name}: defined (inputs: {ins}; outputs: {outs})")
            return None
        return st.name

    # -- %pipelite ---------------------------------------------------------------------------
    @line_magic
    def pipelite(self, line: str) -> None:
        try:
            args = _PARSER.parse_args(arg_split(line))
        except UsageError as exc:
            raise UsageError(f"%pipelite: {exc} (see %pipelite? for help)") from None
        if args.command is None:
            raise UsageError(f"%pipelite needs a command: {', '.join(_COMMANDS)} "
                             f"(see %pipelite? for help)")
        handler = getattr(self, f"_cmd_{args.command}")
        self._guarded(lambda: handler(args))

    pipelite.__doc__ = (
        "Inspect and run the PipeLite pipeline of this notebook.\n\n"
        "Examples::\n\n"
        "    %pipelite status\n"
        "    %pipelite run train_model --force\n"
        "    %pipelite graph --format svg\n\n"
        + _help_text()
    )

    @property
    def pipeline(self) -> Any:
        return self.session.pipeline

    def _cmd_run(self, args: Any) -> None:
        names = args.names or None
        if args.dry_run:
            plan = self.pipeline.plan(names, force=args.force)
            if not plan:
                print("[pipelite] nothing to run: every stage needed is fresh")
            for p in plan:
                print(f"[pipelite] would run {p.name}: {'; '.join(p.reasons)}")
            return
        result = self.session.run(names, force=args.force)
        fresh = [n for n in result.skipped if n not in result.executed]
        parts = [f"ran {len(result.executed)} stage(s)"
                 + (f" ({', '.join(result.executed)})" if result.executed else "")]
        if fresh:
            parts.append(f"{len(fresh)} fresh ({', '.join(fresh)})")
        if result:
            parts.append("bound " + ", ".join(result))
        print("[pipelite] " + "; ".join(parts))

    def _cmd_status(self, args: Any) -> None:
        display(StatusTable(self.pipeline.status()))

    def _cmd_explain(self, args: Any) -> None:
        print(self.pipeline.explain(args.name))

    def _cmd_graph(self, args: Any) -> None:
        text = self.pipeline.graph(args.format, artifacts=args.artifacts)
        if args.format == "mermaid":
            display({"text/markdown": f"```mermaid\n{text}```\n", "text/plain": text}, raw=True)
        elif args.format == "svg":
            display({"image/svg+xml": text, "text/plain": "<pipelite stage graph (svg)>"},
                    raw=True)
        else:
            print(text, end="")

    def _cmd_load(self, args: Any) -> None:
        values: dict[str, Any] = {}
        produced = self.session.known_artifacts()
        for name in args.names:
            if name in produced:
                values[name] = self.pipeline.load(name)
                continue
            record = self.pipeline.record(name)  # a stage name: all of its outputs
            outputs = list(record.outputs) if record is not None else []
            if not outputs:
                raise UsageError(f"stage '{name}' has no stored outputs")
            for out in outputs:
                values[out] = self.pipeline.load(out)
        self.session.bind(values)
        print("[pipelite] bound " + ", ".join(values))

    def _cmd_invalidate(self, args: Any) -> None:
        count = self.pipeline.invalidate(args.name)
        print(f"[pipelite] {args.name}: forgot {count} stored result(s)")

    def _cmd_accept(self, args: Any) -> None:
        record = self.pipeline.accept(args.name)
        note = record.accepted
        if note is None:
            print(f"[pipelite] {args.name}: already fresh, nothing to accept")
            return
        why = "; ".join(note.get("reasons") or ()) or "its fingerprint changed"
        print(f"[pipelite] {args.name}: accepted the stored result from "
              f"{local_time(record.started)} for its current code ({why}); it is fresh")

    def _cmd_gc(self, args: Any) -> None:
        if args.keep < 1:
            raise UsageError("%pipelite gc: --keep must be 1 or more (to forget a stage "
                             "entirely, use %pipelite invalidate NAME)")
        try:
            report = self.pipeline.gc(keep=args.keep, max_size=args.max_size,
                                      max_age=args.max_age)
        except InvalidArgumentError as exc:  # a bad --max-size or --max-age: checked first
            raise UsageError(f"%pipelite gc: {exc}") from None
        print(f"[pipelite] gc: {report}")

    def _cmd_store(self, args: Any) -> None:
        note = ""
        options = None
        if args.options:
            try:
                options = parse_storage_options(args.options)
            except PipeliteError as exc:
                raise UsageError(f"%pipelite store: {exc}") from None
        if args.path is None and options is not None:
            self.session.storage_options = options
        if args.path is not None:
            path = _unquoted(args.path)
            if not path.strip():
                raise UsageError("%pipelite store: the path is empty: give a directory or an "
                                 "fsspec URL (e.g. %pipelite store .pipelite), or no PATH to "
                                 "show the current store")
            is_remote, local_path = parse_location(path)
            if not is_remote:
                path = os.path.abspath(os.path.expanduser(local_path))
                existed = os.path.isdir(path)
                try:  # a store you cannot write to should fail here, not in a later cell
                    Store.check_writable(path)
                except OSError as exc:
                    raise UsageError(f"%pipelite store: cannot use {args.path} as a store: "
                                     f"{exc.strerror or exc}") from None
                note = "" if existed else " (a new, empty store)"
            else:
                try:  # an unknown or uninstalled protocol: say so before switching
                    check_store_location(path, options)
                except PipeliteError as exc:
                    raise UsageError(f"%pipelite store: {exc}") from None
            with self.session.hold_trait_notifications():
                if options is not None:
                    self.session.storage_options = options
                self.session.store = path
        print(f"[pipelite] store: {self.pipeline.store.url}{note}")

    def _cmd_panel(self, args: Any) -> None:
        try:
            from .panel import PipelinePanel
        except ModuleNotFoundError as exc:
            if exc.name != f"{__package__}.panel":
                raise
            print("[pipelite] the panel is not available yet in this version of PipeLite; "
                  "use %pipelite status and %pipelite graph meanwhile")
            return
        display(PipelinePanel(self.session))


class StageCellAwaiter:
    """An input transformer (``shell.input_transformers_post``) that lets a ``%%stage`` cell
    with a top-level ``await`` run in IPython's own event loop.

    A cell magic is a plain call: IPython turns the cell into
    ``get_ipython().run_cell_magic('stage', 'NAME', body)``, which cannot await anything in
    the loop (the loop waits for the call to return). For such a cell only, this rewrites that
    line into ``await get_ipython().find_cell_magic('stage').__self__.stage_awaiting('NAME',
    body)``: IPython sees a top-level ``await`` and awaits the cell in its loop (autoawait),
    the kernel's in Jupyter. Every other cell is left as it is. With ``%autoawait off``, or a
    trio or curio loop runner, nothing is rewritten: the magic then runs the cell's coroutine
    as PipeLite runs an ``async def`` stage's, on a fresh loop of its own.
    """

    def __init__(self, shell: Any):
        self.shell = shell

    def __call__(self, lines: list[str]) -> list[str]:
        text = "".join(lines)
        if "run_cell_magic('stage'" not in text:  # (cheap: it runs for every cell)
            return lines
        call = _stage_magic_call(text)
        if call is None or not self._awaits_in_asyncio() or not self._magic_is_ours():
            return lines
        line, body = call
        if not _has_top_level_await(self.shell.transform_cell(body)):
            return lines
        return [f"await get_ipython().find_cell_magic('stage').__self__.stage_awaiting("
                f"{line!r}, {body!r})\n"]

    def _awaits_in_asyncio(self) -> bool:
        shell = self.shell
        asyncio_runner = shell.loop_runner_map["asyncio"][0]
        return bool(shell.autoawait) and not getattr(shell, "trio_runner", None) \
            and shell.loop_runner is asyncio_runner

    def _magic_is_ours(self) -> bool:
        magic = self.shell.find_cell_magic("stage")
        return isinstance(getattr(magic, "__self__", None), PipeliteMagics)


def _stage_magic_call(text: str) -> tuple[str, str] | None:
    """(line, body) of a cell IPython made of a ``%%stage`` cell, or None for another cell."""
    try:
        tree = ast.parse(text)
    except SyntaxError:
        return None
    if len(tree.body) != 1 or not isinstance(tree.body[0], ast.Expr):
        return None
    call = tree.body[0].value
    if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute)
            and call.func.attr == "run_cell_magic" and isinstance(call.func.value, ast.Call)
            and isinstance(call.func.value.func, ast.Name)
            and call.func.value.func.id == "get_ipython" and not call.keywords
            and len(call.args) == 3):
        return None
    values = [a.value for a in call.args
              if isinstance(a, ast.Constant) and isinstance(a.value, str)]
    if len(values) != 3 or values[0] != "stage":
        return None
    return values[1], values[2]


def _has_top_level_await(source: str) -> bool:
    """Whether ``source`` awaits at top level (as IPython decides whether to await a cell)."""
    try:
        code = compile(source, "<cell>", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT,
                       dont_inherit=True)
    except (SyntaxError, ValueError):  # the magic reports it, with the cell's lines
        return False
    return bool(code.co_flags & inspect.CO_COROUTINE)
