"""PipeLite: stages that couple through named artifacts, cached until something they depend on
changes.

>>> from pipelite import stage, Pipeline
>>> @stage(outputs="total")
... def total(numbers):
...     return sum(numbers)

The core never imports IPython; ``%load_ext pipelite`` loads the extension in ``pipelite_ipy``.
"""
from __future__ import annotations

__version__ = "0.1.0"

from ._files import File
from .errors import (
    AcceptRefusedError,
    ArtifactRemovedError,
    CorruptArtifactError,
    CycleError,
    DuplicateProducerError,
    FormatError,
    FormatLoadError,
    FormatSaveError,
    GraphvizNotFoundError,
    InvalidArgumentError,
    InvalidNameError,
    MissingInputError,
    ParameterError,
    PipeliteError,
    StageDefinitionError,
    StageNotDefinedError,
    StageOutputError,
    StageSubmitError,
    StaleArtifactError,
    StoreFullError,
    StoreLocationError,
    StoreNotWritableError,
    UnknownArtifactError,
    UnknownFormatError,
    UnknownStageError,
    UnsafeRestoreError,
    UnsafeStorePathError,
    UntrustedRecordError,
)
from .events import StageEvent, subscribe
from .fingerprint import PipeliteWarning
from .formats import register_format
from .pipeline import OutputInfo, Pipeline, PlannedStage, RunResult, StageStatus
from .stage import REGISTRY, Artifact, CellStage, Registry, Stage, stage
from .store import GcReport, Store

__all__ = [
    "AcceptRefusedError",
    "Artifact",
    "ArtifactRemovedError",
    "CellStage",
    "CorruptArtifactError",
    "CycleError",
    "DuplicateProducerError",
    "File",
    "FormatError",
    "FormatLoadError",
    "FormatSaveError",
    "GcReport",
    "GraphvizNotFoundError",
    "InvalidArgumentError",
    "InvalidNameError",
    "MissingInputError",
    "OutputInfo",
    "ParameterError",
    "Pipeline",
    "PipeliteError",
    "PipeliteWarning",
    "PlannedStage",
    "REGISTRY",
    "Registry",
    "RunResult",
    "Stage",
    "StageDefinitionError",
    "StageEvent",
    "StageNotDefinedError",
    "StageOutputError",
    "StageSubmitError",
    "StageStatus",
    "StaleArtifactError",
    "Store",
    "StoreFullError",
    "StoreLocationError",
    "StoreNotWritableError",
    "UnknownArtifactError",
    "UnknownFormatError",
    "UnknownStageError",
    "UnsafeRestoreError",
    "UnsafeStorePathError",
    "UntrustedRecordError",
    "__version__",
    "load_ipython_extension",
    "register_format",
    "stage",
    "subscribe",
    "unload_ipython_extension",
]


def load_ipython_extension(ipython):  # pragma: no cover - exercised through IPython
    """``%load_ext pipelite``: delegates to ``pipelite_ipy`` (imported only now)."""
    from pipelite_ipy import load_ipython_extension as load

    load(ipython)


def unload_ipython_extension(ipython):  # pragma: no cover - exercised through IPython
    """``%unload_ext pipelite``."""
    from pipelite_ipy import unload_ipython_extension as unload

    unload(ipython)
