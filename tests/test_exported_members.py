"""The public surface, pinned: what ``from pipelite import ...`` offers, and the error tree."""
from __future__ import annotations

import inspect
import re
import types

import pytest

import pipelite
import pipelite.errors
import pipelite.formats
import pipelite_ipy
from pipelite import PipeliteError

PIPELITE = [
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

PIPELITE_IPY = ["current_session", "load_ipython_extension", "unload_ipython_extension"]


def _public_attributes(package: types.ModuleType) -> set[str]:
    """What a user can reach as ``package.NAME``: every attribute not starting with ``_``,
    except submodules (``pipelite.store``) and ``from __future__ import annotations``."""
    return {name for name, value in vars(package).items()
            if not name.startswith("_") and not isinstance(value, types.ModuleType)
            and not isinstance(value, type(annotations))}  # the __future__ feature


@pytest.mark.parametrize("package, expected", [(pipelite, PIPELITE),
                                               (pipelite_ipy, PIPELITE_IPY)])
def test_all_lists_exactly_the_public_names(package, expected):
    assert package.__all__ == expected  # sorted; a change here is a change of the API
    for name in package.__all__:
        assert hasattr(package, name), name
    assert _public_attributes(package) <= set(package.__all__)


def test_every_public_name_of_pipelite_is_in_the_readme():
    import pathlib

    readme = (pathlib.Path(pipelite.__file__).parent.parent / "README.md").read_text()
    missing = [name for name in pipelite.__all__
               if not re.search(rf"\b{re.escape(name)}\b", readme)]
    assert missing == []


def _error_classes() -> dict[str, type]:
    return {name: cls for name, cls in vars(pipelite.errors).items()
            if inspect.isclass(cls) and issubclass(cls, PipeliteError)
            and cls.__module__ == "pipelite.errors"}


def _documented_tree() -> list[tuple[str, str | None, set[str]]]:
    """(class, the class it is listed under, the names after "also") for each line of the
    tree in ``pipelite/errors.py``'s docstring."""
    doc = pipelite.errors.__doc__
    block = doc.split("::\n\n", 1)[1].split("\n\n", 1)[0]
    entries, parents = [], []  # parents: (indent, name) of the open branches
    for line in block.splitlines():
        indent = len(line) - len(line.lstrip())
        name, _, also = line.strip().partition(" ")
        while parents and parents[-1][0] >= indent:
            parents.pop()
        also_names = set(re.findall(r"\w+", also.strip().removeprefix("also")))
        entries.append((name, parents[-1][1] if parents else None, also_names))
        parents.append((indent, name))
    return entries


def test_the_error_tree_lists_every_error_once():
    listed = [name for name, _, _ in _documented_tree()]
    assert sorted(listed) == sorted(_error_classes())


def test_each_error_is_listed_under_its_base_and_with_its_other_bases():
    classes = _error_classes()
    for name, parent, also in _documented_tree():
        bases = {b.__name__ for b in classes[name].__bases__}
        expected = bases if parent is None else {parent} | also
        assert bases == expected, f"{name} derives from {sorted(bases)}"


def test_every_error_can_be_imported_from_pipelite():
    assert set(_error_classes()) <= set(pipelite.__all__)


def test_no_condition_raises_a_bare_pipelite_error():
    import pathlib

    root = pathlib.Path(pipelite.__file__).parent.parent
    bare = [f"{path.relative_to(root)}:{n}"
            for package in ("pipelite", "pipelite_ipy")
            for path in sorted((root / package).glob("*.py"))
            for n, line in enumerate(path.read_text().splitlines(), 1)
            if re.search(r"raise PipeliteError\b", line)]
    assert bare == []


class _BytesPath:
    def __fspath__(self):
        return b"/tmp/store"


def _run_a_stage_known_only_from_the_store(store_dir):
    from pipelite import REGISTRY, Pipeline, stage

    @stage(outputs="n")
    def numbers():
        return 1

    Pipeline(store=str(store_dir)).run("numbers")
    REGISTRY.clear()
    Pipeline(store=str(store_dir)).run("numbers")


@pytest.mark.parametrize("error, cause", [
    ("InvalidArgumentError", lambda d: pipelite.Pipeline(store=str(d)).graph("png")),
    ("InvalidArgumentError", lambda d: pipelite.Pipeline(store=str(d), verify="often")),
    ("InvalidArgumentError", lambda d: pipelite.Store(str(d)).gc(keep=0)),
    ("InvalidArgumentError", lambda d: pipelite.Store(str(d)).gc(grace=-1)),
    ("StoreLocationError", lambda d: pipelite.Store(42)),
    ("StoreLocationError", lambda d: pipelite.Store(_BytesPath())),
    ("UnknownFormatError", lambda d: pipelite.formats.format_named("x")),
    ("StageNotDefinedError", _run_a_stage_known_only_from_the_store),
])
def test_each_condition_raises_its_own_error_class(store_dir, error, cause):
    with pytest.raises(getattr(pipelite, error)) as info:
        cause(store_dir)
    assert type(info.value) is getattr(pipelite, error)


def test_the_extension_uses_no_private_module_of_the_core():
    """The contract: pipelite_ipy is built only on pipelite's public API."""
    import ast
    from pathlib import Path

    private = []
    for path in sorted(Path(pipelite_ipy.__file__).parent.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            private += [f"{path.name}: {n}" for n in names
                        if n.startswith("pipelite.") and any(p.startswith("_")
                                                              for p in n.split(".")[1:])]
    assert private == []
