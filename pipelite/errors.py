"""Errors a user can cause. Every message says what went wrong and how to fix it.

``except pipelite.PipeliteError`` catches every one. Each class sits under the one it derives
from; "also" names its other base::

    PipeliteError
        InvalidNameError           also ValueError
        InvalidArgumentError       also ValueError
        UnknownStageError          also KeyError
        UnknownArtifactError       also KeyError
        StageDefinitionError
            DuplicateProducerError
            CycleError
        StageNotDefinedError
        StageSubmitError
        MissingInputError
        ParameterError
        StageOutputError
        StaleArtifactError
        AcceptRefusedError
        CorruptArtifactError
            ArtifactRemovedError
        UnsafeStorePathError
            UnsafeRestoreError
        UntrustedRecordError
        GraphvizNotFoundError
        StoreLocationError
        StoreFullError
        StoreNotWritableError
        FormatError
            FormatSaveError        also StageOutputError
            FormatLoadError
            UnknownFormatError

Apart from the tree, ``RunCancelled`` (a ``KeyboardInterrupt``): a run stopped on request
(``Pipeline.run(cancel=event)``, the panel's Cancel button). Nothing is stored for the stage it
stopped, and no failure is recorded: the stage's state is what it was before.

The IPython extension adds ``CellSyntaxError`` (a ``%%stage`` cell that is not valid Python)
and ``ReassignedInputError`` (a ``DuplicateProducerError``).
"""
from __future__ import annotations


class PipeliteError(Exception):
    """Base class of every error PipeLite raises for a user mistake or a bad store.

    The user sees their own frames and the error, not PipeLite's internals: IPython shows
    ``_render_traceback_``'s view, a public call cuts the traceback at itself (``at_the_call``,
    which keeps the frames it cuts for debugging PipeLite), and pytest hides the frames
    marked ``__tracebackhide__``."""

    def _render_traceback_(self) -> list[str]:
        from .present import error_view

        return error_view(self)


class InvalidNameError(PipeliteError, ValueError):
    """A stage or artifact name that is not allowed (also a ``ValueError``)."""


class StageDefinitionError(PipeliteError):
    """A stage is declared in a way PipeLite cannot use."""


class DuplicateProducerError(StageDefinitionError):
    """Two stages claim to produce the same artifact."""


class UnknownStageError(PipeliteError, KeyError):
    """A stage name that is not registered (nor known from the store)."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class UnknownArtifactError(PipeliteError, KeyError):
    """An artifact that no stage produces."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class MissingInputError(PipeliteError):
    """A stage needs an artifact that no stage produces and the store does not hold."""


class ParameterError(PipeliteError):
    """A stage parameter is missing, unknown, or cannot be passed."""


class StageOutputError(PipeliteError):
    """A stage returned something that does not match its declared outputs."""


class StageSubmitError(PipeliteError):
    """An executor would not take a stage: it is shut down, or something the stage needs
    cannot be pickled to be sent to a worker (the message names it)."""


class StageNotDefinedError(PipeliteError):
    """A stage known only from the store (a result is stored, but no code in this session
    defines it) cannot be run: run the cell or import the module that defines it first."""


class StaleArtifactError(PipeliteError):
    """The stored value of an artifact is out of date."""


class AcceptRefusedError(PipeliteError):
    """``Pipeline.accept`` would adopt a result for something that may change it: an input's
    content, a file, an upstream stage not fresh, or no stored result to adopt."""


class CorruptArtifactError(PipeliteError):
    """A stored file does not match the size or hash recorded when it was written."""

    def __init__(self, path: str, detail: str):
        super().__init__(
            f"stored file {path} is corrupt ({detail}); it will be recomputed by the next run"
        )
        self.path = path
        self.detail = detail


class ArtifactRemovedError(CorruptArtifactError):
    """A stored file was deleted by another process (``gc``, ``invalidate``) between reading its
    record and loading it: not damage, nothing is quarantined. A ``CorruptArtifactError`` for
    code that catches that."""

    def __init__(self, path: str, detail: str = "removed by another process"):
        PipeliteError.__init__(
            self, f"stored file {path} was {detail} while it was being loaded; "
                  f"it will be recomputed by the next run")
        self.path = path
        self.detail = detail

    def __reduce__(self):
        return type(self), (self.path, self.detail)


class UnsafeStorePathError(PipeliteError):
    """A path in the store would lead outside it (``..``, an absolute path, a symbolic link):
    PipeLite refuses to open, rename or delete it."""


class UnsafeRestoreError(UnsafeStorePathError):
    """A file output's recorded place is not one PipeLite writes to: not a plain relative
    path under the current folder, inside the store, or reached through a symbolic link."""


class UntrustedRecordError(PipeliteError):
    """A stored result that could run code when loaded (a pickle, a user format, a cell's
    replayed output) comes from a record not signed with your key: accept the store with
    ``pipelite trust STORE`` if you trust whoever wrote it."""


class CycleError(StageDefinitionError):
    """The stages' inputs and outputs form a cycle."""


class GraphvizNotFoundError(PipeliteError):
    """SVG output needs the Graphviz ``dot`` program."""


class InvalidArgumentError(PipeliteError, ValueError):
    """An argument to a PipeLite call has the wrong type or value (also a ``ValueError``)."""


class StoreLocationError(PipeliteError):
    """A store location (or its ``storage_options``) that cannot be used: not a path or URL
    string, an empty path, a path that is not a directory or cannot be created, an unknown or
    uninstalled fsspec protocol; on the command line, which only reads, a store that does not
    exist."""


class FormatError(PipeliteError):
    """A format given to ``register_format`` is unusable, or failed, or a stored file's format
    is unknown here; ``__cause__`` is the original error where there is one."""


class FormatSaveError(FormatError, StageOutputError):
    """A format registered with ``register_format`` raised while saving a value (nothing was
    stored; the value is not silently pickled instead)."""


class FormatLoadError(FormatError):
    """A format registered with ``register_format`` raised while loading a stored file."""


class UnknownFormatError(FormatError):
    """An artifact was stored in a format that is not registered in this process: call
    ``register_format`` for it before loading."""
def _reason(errno_: int | None) -> str:
    import os

    return os.strerror(errno_).lower() if errno_ else "cannot write"


class StoreFullError(PipeliteError):
    """The store's disk is full (ENOSPC) or over quota (EDQUOT): nothing was stored.
    ``store``, ``stage``, ``needed`` (bytes being written, None if unknown), ``errno``;
    ``__cause__`` is the ``OSError``."""

    def __init__(self, store: str, stage: str | None = None, needed: int | None = None,
                 what: str = "a file", errno: int | None = None):
        from .present import human_bytes

        self.store, self.stage, self.needed, self.what, self.errno = (
            store, stage, needed, what, errno)
        of = f" of stage '{stage}'" if stage else ""
        size = (f"needs {human_bytes(needed)} ({needed:,} bytes)" if needed is not None
                else "failed (size unknown)")
        super().__init__(
            f"the store {store} is full ({_reason(errno)}): writing {what}{of} {size}. "
            f"Nothing was stored and no partial file is left; free space on that disk "
            f"(pipeline.gc() deletes old results) or use a store with more room, then run again"
        )

    def __reduce__(self):  # rebuilt from its fields when sent back from a worker process
        return (type(self), (self.store, self.stage, self.needed, self.what, self.errno))


class StoreNotWritableError(PipeliteError):
    """The store cannot be written (a read-only file system, no permission: EROFS, EACCES,
    EPERM). Fresh results can still be loaded. ``store``, ``path``, ``action``, ``errno``;
    ``__cause__`` is the ``OSError``."""

    def __init__(self, store: str, path: str | None = None, action: str = "write to it",
                 errno: int | None = None):
        self.store, self.path, self.action, self.errno = store, path, action, errno
        at = f" at {path}" if path and path != store else ""
        super().__init__(
            f"cannot {action}: the store {store} is not writable ({_reason(errno)}{at}). "
            f"Fresh results can still be loaded from it; to compute or delete, make it "
            f"writable or use another store (Pipeline(store=...))"
        )

    def __reduce__(self):
        return (type(self), (self.store, self.path, self.action, self.errno))


def limit_error(exc: BaseException, store: str, *, stage: str | None = None,
                needed: int | None = None, what: str = "a file",
                action: str | None = None) -> PipeliteError | None:
    """The ``StoreFullError`` or ``StoreNotWritableError`` an ``OSError`` from writing to the
    store stands for; None for any other error (re-raise it as it is)."""
    import errno as _errno

    if not isinstance(exc, OSError):
        return None
    full = {_errno.ENOSPC, getattr(_errno, "EDQUOT", _errno.ENOSPC)}
    read_only = {_errno.EROFS, _errno.EACCES, _errno.EPERM}
    if exc.errno in full:
        return StoreFullError(store, stage, needed, what, exc.errno)
    if exc.errno in read_only:
        of = f" stage '{stage}'" if stage else ""
        return StoreNotWritableError(store, exc.filename, action or f"write {what}{of}",
                                     exc.errno)
    return None


class RunCancelled(KeyboardInterrupt):
    """A run stopped on request, between stages or inside one (``stage``, when known).

    A ``KeyboardInterrupt``, so that a stage's own ``except Exception`` does not swallow it.
    Nothing is stored for the stage it stopped and no failure is recorded."""

    def __init__(self, message: str = "the run was cancelled", stage: str | None = None):
        super().__init__(message)
        self.stage = stage

    def __reduce__(self):
        return (type(self), (str(self), self.stage))


class _PipeliteFrames(Exception):
    """Where PipeLite raised the error whose ``__context__`` this is, with every frame of
    PipeLite's that the error passed through."""


def at_the_call(exc: PipeliteError) -> PipeliteError:
    """``exc``, to be raised again from a public call (``raise at_the_call(exc) from
    exc.__cause__``): a script's traceback then shows the user's frames and that call, not
    PipeLite's internals, as the contract promises.

    The frames cut off are kept, not discarded: they are the traceback of ``exc.__context__``
    (a ``_PipeliteFrames``), which ``raise ... from`` hides from every display while keeping
    it for introspection (PEP 415): ``traceback.print_exception(exc.__context__)`` shows where
    PipeLite raised it, for debugging PipeLite itself. A chain already there stays behind it."""
    frames = _PipeliteFrames(f"where PipeLite raised {type(exc).__name__}")
    frames.__traceback__ = exc.__traceback__
    frames.__context__ = exc.__context__
    exc.__context__ = frames
    return exc.with_traceback(None)

