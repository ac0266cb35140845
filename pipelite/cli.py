"""The ``pipelite`` command: inspect and tidy a store, run a notebook's stages headless."""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from dataclasses import replace
from typing import Sequence

from ._location import parse_location, parse_storage_options
from .errors import PipeliteError, StoreLocationError, UnknownStageError
from .present import human_bytes, log_text, status_table

__all__ = ["main"]


DEFAULT_STORE = ".pipelite"
_EMPTY_STORE = ("pipelite: error: --store is empty: give the store's directory or fsspec URL, "
                "or leave --store out for ./.pipelite")


def _pipeline(store: str, options: dict | None = None):
    from .pipeline import Pipeline

    return Pipeline(store=store, storage_options=options or None)


def _check_store_exists(store: str) -> None:
    """A local store that does not exist is a mistake (a typo, the wrong directory): say so
    instead of showing an empty table. An existing, empty directory is a store with no stages."""
    is_remote, path = parse_location(store)
    if not is_remote and not os.path.isdir(os.path.expanduser(path)):
        raise StoreLocationError(f"no PipeLite store at {store}")


def _parser() -> argparse.ArgumentParser:
    store_help = "store location: a path or fsspec URL (default: ./.pipelite)"
    # --store is accepted before the command (pipelite --store P status) and after it
    # (pipelite status --store P). SUPPRESS keeps a subcommand from overwriting the global
    # value with its own default when --store is not given after the command.
    option_help = ("an fsspec storage option for a remote store, KEY=VALUE (repeat it; a dotted "
                   "KEY nests: client_kwargs.endpoint_url=http://...). S3 also reads the "
                   "usual AWS_* variables")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--store", default=argparse.SUPPRESS, help=store_help)
    common.add_argument("--storage-option", dest="storage_options", action="append",
                        default=argparse.SUPPRESS, metavar="KEY=VALUE", help=option_help)
    parser = argparse.ArgumentParser(
        prog="pipelite", description="Inspect a PipeLite store or run a notebook's stages.")
    parser.add_argument("--store", default=None, help=store_help)
    parser.add_argument("--storage-option", dest="storage_options", action="append",
                        default=[], metavar="KEY=VALUE", help=option_help)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("status", parents=[common],
                   help="list the stages in the store and their last results")
    g = sub.add_parser("graph", parents=[common], help="print the stage graph")
    g.add_argument("--format", choices=("mermaid", "dot", "svg"), default="mermaid")
    g.add_argument("--artifacts", action="store_true",
                   help="draw every artifact as a node (default: stages only, edges labelled "
                        "with the artifacts they carry)")
    gc = sub.add_parser("gc", parents=[common],
                        help="delete all but the newest results per stage, results unused for "
                             "--max-age, and the least recently used beyond --max-size")
    gc.add_argument("--keep", type=int, default=1, help="results to keep per stage (default 1)")
    gc.add_argument("--max-size", metavar="SIZE",
                    help="delete the least recently used results until the store's objects "
                         "take at most SIZE (e.g. 20GiB, 500MB)")
    gc.add_argument("--max-age", metavar="AGE",
                    help="delete results not loaded or reused for AGE (e.g. 30d, 12h)")
    log = sub.add_parser("log", parents=[common],
                         help="a stage's stored results, newest first: run id, time, who ran "
                              "it where, git commit, and what changed since the one before")
    log.add_argument("stage", metavar="STAGE")
    t = sub.add_parser("trust", parents=[common],
                       help="sign every record of a store with your key: accept its pickles "
                            "and replayed outputs as if you had written them")
    t.add_argument("location", nargs="?", metavar="STORE",
                   help="the store (default: --store, or ./.pipelite)")
    v = sub.add_parser("verify", parents=[common],
                       help="hash every stored object; move damaged ones to quarantine/")
    v.add_argument("--jobs", type=int, default=None, metavar="N",
                   help="objects checked in parallel (default: up to 8)")
    run = sub.add_parser(
        "run", parents=[common],
        help="run a notebook's stages headless, with the same cache as the notebook",
        description="Execute NOTEBOOK in a fresh kernel with the PipeLite extension loaded. "
                    "With STAGE names, every %%stage cell is only defined and just those stages "
                    "(and whatever they need) run; other cells (imports, helpers) run as usual. "
                    "The store is the notebook's own (./.pipelite beside it) unless --store "
                    "is given; --store wins over a %%pipelite store line in the notebook.")
    run.add_argument("notebook", metavar="NOTEBOOK.ipynb")
    run.add_argument("stages", nargs="*", metavar="STAGE")
    run.add_argument("--force", action="store_true",
                     help="recompute the named stages (every stage, without STAGE names)")
    run.add_argument("--output", metavar="PATH",
                     help="also write the executed notebook, with its outputs, to PATH")
    run.add_argument("--timeout", type=int, default=None, metavar="SECONDS",
                     help="per-cell timeout (default: none)")
    return parser


def prepare_notebook(nb, stages: Sequence[str], store: str | None, force: bool = False):
    """The notebook to execute for ``pipelite run``: the extension loaded first; with
    ``stages``, each ``%%stage`` cell only defines its stage and a last cell runs the targets."""
    import nbformat

    nb = nbformat.from_dict(nb)
    cells = []
    for cell in nb.cells:
        if cell.cell_type == "code" and cell.source.lstrip().startswith("%%stage"):
            first, _, rest = cell.source.lstrip().partition("\n")
            words = first.split()
            if stages and "--define" not in words:
                first += " --define"
            elif not stages and force and "--force" not in words and "--define" not in words:
                first += " --force"  # pipelite run NB --force: every stage recomputes
            cell.source = first + "\n" + rest
        if cell.cell_type == "code" and store:
            cell.source = _store_overridden(cell.source, store)
        cells.append(cell)
    setup = "%load_ext pipelite" + (f"\n%pipelite store {store}" if store else "")
    nb.cells = [nbformat.v4.new_code_cell(setup)] + cells
    if stages:
        nb.cells.append(nbformat.v4.new_code_cell(
            "%pipelite run " + " ".join(stages) + (" --force" if force else "")))
    return nb


_STORE_LINE = re.compile(r"^(\s*)%pipelite\s+store\s+(?!-)(\S.*)$", re.MULTILINE)


def _store_overridden(source: str, store: str) -> str:
    """A ``%pipelite store PATH`` line of the notebook, when ``pipelite run --store`` is
    given: the command line wins, and the line says so in its place."""
    def note(match: re.Match) -> str:
        said = f"%pipelite store {match.group(2).strip()}"
        message = f"[pipelite] {said} ignored: pipelite run --store {store} wins"
        return f"{match.group(1)}print({message!r})"

    return _STORE_LINE.sub(note, source)


def _stage_outputs(nb) -> set[str]:
    """The names the notebook's ``%%stage`` cells bind (best effort: for messages only)."""
    from ._cellcode import analyze

    names: set[str] = set()
    for cell in nb.cells:
        if cell.cell_type != "code" or not cell.source.lstrip().startswith("%%stage"):
            continue
        first, _, body = cell.source.lstrip().partition("\n")
        words = first.split()
        for i, word in enumerate(words):
            if word in ("-o", "--output"):
                names.update(w for w in words[i + 1:] if not w.startswith("-"))
        try:
            names.update(analyze(body).outputs)
        except SyntaxError:  # IPython syntax in the cell; the kernel will say if it matters
            pass
    return names


def _failed_since(location: str, since: float) -> list[tuple[str, str]]:
    """(stage, error) of every stage of the store whose last run failed after ``since``."""
    import datetime as dt

    from .store import Store

    try:
        store = Store(location)
        stages = store.stages()
    except (PipeliteError, OSError):
        return []
    out = []
    for name in stages:
        failure = store.failure(name)
        if failure is None or failure.started is None:
            continue
        try:
            when = dt.datetime.fromisoformat(failure.started).timestamp()
        except ValueError:
            continue
        if when >= since - 1:
            out.append((name, (failure.error or "").splitlines()[0] if failure.error else ""))
    return out


def _report_cell_errors(runnable, notebook: str) -> bool:
    """After a targeted run (errors allowed): warn about plain cells that failed, and fail on
    an error in the setup, a ``%%stage`` cell or the final ``%pipelite run`` cell."""
    from nbclient.exceptions import CellExecutionError

    produced = _stage_outputs(runnable)
    last = len(runnable.cells) - 1
    for index, cell in enumerate(runnable.cells):
        if cell.cell_type != "code":
            continue
        error = next((o for o in cell.get("outputs", []) if o.get("output_type") == "error"),
                     None)
        if error is None:
            continue
        plain = 0 < index < last and not cell.source.lstrip().startswith("%%stage")
        text = "\n".join(error.get("traceback") or ()) + str(error.get("evalue", ""))
        if re.search(r"PipeLite: stage '[^']+' failed", text):
            plain = False  # a stage failed in it: that fails the command, whatever the cell
        if not plain:
            exc = CellExecutionError.from_cell_and_msg(cell, error)
            print(f"pipelite: a cell of {notebook} failed:\n{exc}", file=sys.stderr)
            return False
        ename, evalue = error.get("ename", "Error"), error.get("evalue", "")
        match = re.match(r"name '([^']+)' is not defined", evalue)
        why = ("reads a stage output that is not loaded in this mode"
               if ename == "NameError" and match and match.group(1) in produced
               else "it failed in this mode")
        # index counts the notebook's own cells from 1 (index 0 is the added setup cell)
        print(f"pipelite: skipped cell {index} ({why}): {ename}: {evalue}", file=sys.stderr)
    return True


def _run_notebook(args: argparse.Namespace) -> int:
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    path = os.path.abspath(args.notebook)
    if not os.path.exists(path):
        print(f"pipelite: error: no notebook at {args.notebook}", file=sys.stderr)
        return 2
    if os.path.isdir(path):
        print(f"pipelite: error: {args.notebook} is a directory: give a notebook file "
              f"(NOTEBOOK.ipynb)", file=sys.stderr)
        return 2
    try:
        nb = nbformat.read(path, as_version=4)
    except Exception as exc:  # noqa: BLE001 - not JSON, not a notebook, unreadable
        why = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"pipelite: error: {args.notebook} is not a readable Jupyter notebook ({why}): "
              f"give an .ipynb file saved by Jupyter", file=sys.stderr)
        return 2
    store = args.store  # None: the notebook's own store, ./.pipelite beside it
    if store is not None and not store.strip():
        print(_EMPTY_STORE, file=sys.stderr)
        return 2
    if store is not None:
        is_remote, where = parse_location(store)
        if not is_remote:
            store = os.path.abspath(os.path.expanduser(where))
    if args.output:
        folder = os.path.dirname(os.path.abspath(args.output))
        if not os.path.isdir(folder):  # before the notebook runs, not after
            print(f"pipelite: error: cannot write the executed notebook to {args.output}: "
                  f"its folder {folder} does not exist", file=sys.stderr)
            return 2
    started = time.time()
    runnable = prepare_notebook(nb, args.stages, store, args.force)
    # With STAGE names the %%stage cells only define their stages, so a plain cell that reads
    # a stage output (print(train_data.shape)) cannot run: keep going, and judge afterwards.
    targeted = bool(args.stages)
    # "immediate": once every cell ran, the kernel is stopped without a shutdown request,
    # whose handling in ipykernel 7 races the closing of its output socket and sometimes
    # printed a ZMQError traceback here (ipykernel #1518). What PipeLite keeps is written by
    # then (records, objects and the hash cache are written as they are made)
    client = NotebookClient(runnable, timeout=args.timeout, kernel_name="python3",
                            allow_errors=targeted, shutdown_kernel="immediate",
                            resources={"metadata": {"path": os.path.dirname(path)}})
    try:
        # as Jupyter does: the kernel knows its notebook, and records say which one ran
        env = {**os.environ, "JPY_SESSION_NAME": path}
        if args.storage_options:  # to the kernel's session, never into the notebook's text
            env["PIPELITE_STORAGE_OPTIONS"] = json.dumps(
                parse_storage_options(args.storage_options))
        client.execute(env=env)
    except CellExecutionError as exc:
        print(f"pipelite: a cell of {args.notebook} failed:\n{exc}", file=sys.stderr)
        return 1
    finally:
        if args.output:
            try:
                nbformat.write(runnable, args.output)
            except OSError as exc:
                print(f"pipelite: error: cannot write the executed notebook to {args.output}: "
                      f"{exc.strerror or exc}", file=sys.stderr)
                return 2  # noqa: B012 - the write failing is the error to report
    if targeted and not _report_cell_errors(runnable, args.notebook):
        return 1
    if targeted:  # a stage that failed in a plain cell (a cell that ran it) fails the command
        where = store or os.path.join(os.path.dirname(path), ".pipelite")
        failed = _failed_since(where, started)
        if failed:
            for name, error in failed:
                print(f"pipelite: stage '{name}' failed: {error}", file=sys.stderr)
            return 1
    for cell in runnable.cells:
        for out in cell.get("outputs", []):
            text = _printed(out)
            if "[pipelite]" in text:
                print("".join(line for line in text.splitlines(True)
                              if line.startswith("[pipelite]")), end="")
    return 0


def _printed(output: dict) -> str:
    """What a cell output printed: a stream, or the text a ``%%stage`` cell shows through a
    display id (its state badge aside)."""
    if output.get("output_type") == "stream":
        return str(output.get("text", ""))
    data = output.get("data") or {}
    if output.get("output_type") == "display_data" and \
            "pipelite-cell-badge" not in str(data.get("text/html", "")):
        return str(data.get("text/plain", ""))
    return ""


def _log(pipe, stage: str) -> str:
    """What ``pipelite log STAGE`` prints; an unknown stage is an error naming the known."""
    import difflib

    records = pipe.store.records_of(stage)
    if not records:
        known = pipe.store.stages()
        if stage not in known:
            hint = difflib.get_close_matches(stage, known, n=1)
            raise UnknownStageError(
                f"no stage '{stage}' in {pipe.store.url}"
                + (f"; did you mean '{hint[0]}'?" if hint
                   else f"; stages stored: {', '.join(known) or 'none'}"))
    return log_text(stage, records)


def _progress_bar(width: int = 30):
    """A progress callback for ``Store.scrub``: a bar redrawn in place on a terminal, nothing
    when stderr is not one (a log gets the summary only)."""
    if not sys.stderr.isatty():
        return None

    def show(done: int, total: int, nbytes: int) -> None:
        filled = width * done // max(total, 1)
        sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} objects, "
                         f"{human_bytes(nbytes)}" + ("\n" if done == total else ""))
        sys.stderr.flush()

    return show


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``pipelite`` console script."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "run":
        return _run_notebook(args)
    store_arg = getattr(args, "location", None) or args.store
    if store_arg is not None and not store_arg.strip():
        print(_EMPTY_STORE, file=sys.stderr)  # not silently the default store
        return 2
    store = DEFAULT_STORE if store_arg is None else store_arg
    try:
        _check_store_exists(store)
        pipe = _pipeline(store, parse_storage_options(args.storage_options))
        if args.command == "status":
            statuses = pipe.status()
            print(status_table(statuses, in_session=False) if statuses
                  else f"no stages yet in {pipe.store.url}")
        elif args.command == "graph":
            from .graph import render

            # the states status shows: a stage known from the store only is "stored"
            statuses = [replace(s, state="stored") if s.state == "fresh" and not s.defined
                        else s for s in pipe.status()]
            print(render(statuses, args.format, artifacts=args.artifacts), end="")
        elif args.command == "log":
            print(_log(pipe, args.stage))
        elif args.command == "gc":
            print(pipe.gc(keep=args.keep, max_size=args.max_size, max_age=args.max_age))
        elif args.command == "trust":
            count = pipe.store.trust()
            print(f"signed {count} record(s) of {pipe.store.url} with your key: its pickles "
                  f"and replayed outputs now load")
        elif args.command == "verify":
            report = pipe.store.scrub(jobs=args.jobs, progress=_progress_bar())
            print(report)
            return 0 if report.ok else 1
    except PipeliteError as exc:
        print(f"pipelite: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
