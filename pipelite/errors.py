"""Errors a user can cause. Every message says what went wrong and how to fix it."""
from __future__ import annotations


class PipeliteError(Exception):
    """Base class of every error PipeLite raises for a user mistake or a bad store."""


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


class StageFailedError(PipeliteError):
    """A stage raised while running; nothing was stored. ``__cause__`` is the original error."""

    def __init__(self, stage: str, summary: str):
        super().__init__(
            f"stage '{stage}' failed: {summary}. Nothing was stored; the previous result (if any) "
            f"is kept. Fix the error and run it again."
        )
        self.stage = stage
        self.summary = summary


class StaleArtifactError(PipeliteError):
    """The stored value of an artifact is out of date."""


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


class CycleError(StageDefinitionError):
    """The stages' inputs and outputs form a cycle."""


class GraphvizNotFoundError(PipeliteError):
    """SVG output needs the Graphviz ``dot`` program."""
