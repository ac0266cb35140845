"""Declaring stages: ``@stage``, ``Artifact`` identifiers, cell stages, and the registry."""
from __future__ import annotations

import ast
import inspect
import re
import textwrap
import types
from collections.abc import Mapping as _AbcMapping
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Iterable, Iterator, Mapping

from ._aio import is_async_callable, run_to_completion
from .errors import (
    DuplicateProducerError,
    InvalidNameError,
    ParameterError,
    PipeliteError,
    StageDefinitionError,
    StageOutputError,
    at_the_call,
)

if TYPE_CHECKING:
    from ._cellcode import CellAnalysis

__all__ = [
    "Artifact",
    "Stage",
    "FunctionStage",
    "ClassStage",
    "CellStage",
    "Registry",
    "REGISTRY",
    "stage",
    "artifact_name",
    "stage_of",
]

_STAGE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*\Z")
REQUIRED = inspect.Parameter.empty
# Stage names become folder and lock-file names in the store (a lock file adds 38 characters
# to the name); file systems allow 255 bytes a name, so a longer name broke every status().
MAX_NAME_LENGTH = 200


def _shown(name: str) -> str:
    return repr(name) if len(name) <= 60 else f"{name[:40]!r}... ({len(name)} characters)"


def validate_stage_name(name: Any) -> str:
    """Return ``name`` if it is a valid stage name, else raise ``InvalidNameError`` naming it."""
    if not isinstance(name, str) or not _STAGE_NAME.match(name):
        raise InvalidNameError(
            f"invalid stage name {name!r}: use letters, digits, '_' and '-', "
            f"starting with a letter or '_'"
        )
    if len(name) > MAX_NAME_LENGTH:
        raise InvalidNameError(
            f"stage name {_shown(name)} is too long: at most {MAX_NAME_LENGTH} characters "
            f"(it becomes a file name in the store); use a shorter name"
        )
    return name


def _snake_case(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", name).lower()


class Artifact:
    """A phony class that names an artifact, usable wherever an artifact name is.

    >>> class TrainData(Artifact):
    ...     '''The training matrix.'''
    >>> TrainData.name
    'train_data'
    """

    name: ClassVar[str] = ""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "name" not in cls.__dict__:
            cls.name = _snake_case(cls.__name__)
        _validate_artifact_str(cls.name)

    def __new__(cls, *args: Any, **kwargs: Any) -> "Artifact":
        raise TypeError(
            f"{cls.__name__} identifies the artifact '{cls.name}'; it is not meant to be "
            f"instantiated: use the class itself (e.g. pipeline.load({cls.__name__}))"
        )


def _validate_artifact_str(name: Any) -> str:
    if not isinstance(name, str) or not name.isidentifier():
        raise InvalidNameError(
            f"invalid artifact name {name!r}: artifact names must be Python identifiers"
        )
    if len(name) > MAX_NAME_LENGTH:
        raise InvalidNameError(
            f"artifact name {_shown(name)} is too long: at most {MAX_NAME_LENGTH} characters; "
            f"use a shorter name"
        )
    return name


def artifact_name(ref: Any) -> str:
    """The artifact name that ``ref`` (a string or an ``Artifact`` subclass) stands for."""
    if isinstance(ref, type) and issubclass(ref, Artifact):
        return ref.name
    return _validate_artifact_str(ref)


def _names(refs: Any) -> tuple[str, ...]:
    if isinstance(refs, (str, type)):
        refs = [refs]
    return tuple(artifact_name(r) for r in refs)


def _output_names(stage_name: str, outputs: Any) -> tuple[str, ...]:
    """Declared outputs as artifact names: a name, an ``Artifact`` class, or a list of them;
    each once."""
    if not isinstance(outputs, (str, type, list, tuple)):
        raise StageDefinitionError(
            f"stage '{stage_name}': outputs={outputs!r} ({type(outputs).__name__}) is not an "
            f"artifact name: pass outputs='name', an Artifact class, or a list of them, e.g. "
            f"outputs=['model', 'metrics']")
    names = _names(outputs)  # a bad name is an InvalidNameError (a ValueError), as before
    _refuse_duplicate_outputs(stage_name, names)
    return names


def _refuse_duplicate_outputs(stage_name: str, names: Iterable[str]) -> None:
    seen: set[str] = set()
    for n in names:
        if n in seen:
            raise StageDefinitionError(
                f"stage '{stage_name}' declares output '{n}' twice: list each artifact once")
        seen.add(n)


def _annotation_artifact(annotation: Any, fn: Any = None) -> str | None:
    if isinstance(annotation, str) and fn is not None:  # `from __future__ import annotations`
        annotation = getattr(fn, "__globals__", {}).get(annotation, annotation)
    if isinstance(annotation, type) and issubclass(annotation, Artifact):
        return annotation.name
    return None


class Stage:
    """A unit of work with named inputs, parameters and outputs. Subclasses say how to call it."""

    kind: ClassVar[str] = "stage"
    _origin: str | None = None  # see ``origin``

    def __init__(
        self,
        name: str,
        inputs: Iterable[str],
        params: Mapping[str, Any],
        outputs: Any = None,
        accepts_any_param: bool = False,
        env: Iterable[str] = (),
        origin: str | None = None,
        *,
        cache: bool = True,
        ignore: Iterable[str] = (),
        expires_after: Any = None,
    ):
        self.name = validate_stage_name(name)
        self.origin = origin
        self.env: tuple[str, ...] = _env_names(name, env)
        self.inputs: tuple[str, ...] = tuple(inputs)
        for i in self.inputs:
            _validate_artifact_str(i)
        if len(set(self.inputs)) != len(self.inputs):
            raise StageDefinitionError(f"stage '{name}' names an input twice: {self.inputs}")
        self.params: dict[str, Any] = dict(params)  # name -> default, or REQUIRED
        self.accepts_any_param = accepts_any_param
        self.single_output: str | None = None
        self.declared_outputs: tuple[str, ...] | None = None
        if outputs is not None:
            self.declared_outputs = _output_names(name, outputs)
            if isinstance(outputs, (str, type)):
                self.single_output = self.declared_outputs[0]
        self.inferred_outputs: tuple[str, ...] | None = None
        self.learnt_outputs: tuple[str, ...] | None = None
        self.input_defaults: dict[str, Any] = {}  # inputs that have a default value
        self.set_policies(cache=cache, ignore=ignore, expires_after=expires_after)

    # -- policies (``@stage(cache=, ignore=, expires_after=)``, ``%%stage`` flags) -------------
    cache: bool = True
    """False: the stage runs every time it is needed and nothing of it is stored; its outputs
    reach downstream stages in memory, by content (so early cut-off still works)."""
    ignore: frozenset[str] = frozenset()
    """Parameters and globals left out of the fingerprint (joblib's ``ignore=``)."""
    expires_after: float | None = None
    """Seconds after which a stored result is stale ("result expired (stored 26 h ago)")."""
    files: tuple[Any, ...] = ()
    """Input ``File``s the stage declares besides its parameters (``%%stage --file``)."""

    def set_policies(self, *, cache: bool = True, ignore: Iterable[str] = (),
                     expires_after: Any = None) -> None:
        """Check and set the stage's cache policies (see the attributes above)."""
        from ._units import parse_duration

        if not isinstance(cache, bool):
            raise StageDefinitionError(
                f"stage '{self.name}': cache={cache!r} is not True or False")
        if isinstance(ignore, str):
            ignore = [ignore]
        if not isinstance(ignore, (list, tuple, set, frozenset)) or not all(
                isinstance(n, str) and n.isidentifier() for n in ignore):
            raise StageDefinitionError(
                f"stage '{self.name}': ignore={ignore!r} is not a list of parameter or global "
                f"names: pass e.g. ignore=['verbose', 'n_jobs']")
        inputs = sorted(set(ignore) & set(getattr(self, "inputs", ())))
        if inputs:
            raise StageDefinitionError(
                f"stage '{self.name}': ignore={list(ignore)!r} names input '{inputs[0]}': an "
                f"input's content always counts; only parameters and globals can be ignored")
        self.cache = cache
        self.ignore = frozenset(ignore)
        self.expires_after = (None if expires_after is None
                              else parse_duration(expires_after, f"stage '{self.name}': "
                                                                 f"expires_after"))

    def param_code(self) -> dict[Any, bool]:
        """Code objects whose defaults are this stage's parameters (see ``Reach``)."""
        return {}

    @property
    def origin(self) -> str | None:
        """The notebook (or script) that defined the stage, as its records name it: a path
        relative to the store's parent folder when under it, else absolute (see
        ``Store.origin_for``); None when unknown (a script or a plain shell, unless given).

        Written into every record of the stage, so the notebook UI can group stages by
        notebook and warn when two notebooks use one stage name. Not part of the
        fingerprint: renaming a notebook leaves its stages fresh."""
        return self._origin

    @origin.setter
    def origin(self, value: str | None) -> None:
        if value is not None and not isinstance(value, str):
            raise StageDefinitionError(
                f"stage '{self.name}': origin={value!r} ({type(value).__name__}) is not the "
                f"path of the notebook that defines it: pass a string, or None")
        self._origin = value

    # -- outputs -----------------------------------------------------------------------------
    @property
    def outputs(self) -> tuple[str, ...] | None:
        """The artifacts this stage produces, or None while unknown (before its first run)."""
        if self.declared_outputs is not None:
            return self.declared_outputs
        if self.learnt_outputs is not None:
            return self.learnt_outputs
        return self.inferred_outputs

    def normalize_result(self, result: Any) -> dict[str, Any]:
        """Turn what the stage returned into ``{artifact name: value}``, checking it."""
        if self.single_output is not None:
            if isinstance(result, dict) and len(result) == 1:
                (key,) = result
                if key == self.single_output or (
                    isinstance(key, type) and issubclass(key, Artifact)
                    and key.name == self.single_output
                ):
                    return {self.single_output: result[key]}
            return {self.single_output: result}
        if result is None and not self.declared_outputs:
            return {}
        if isinstance(result, dict):
            out = {}
            keys: dict[str, Any] = {}
            for key, value in result.items():
                try:
                    art = _key_name(key)
                except InvalidNameError as exc:
                    raise StageOutputError(
                        f"stage '{self.name}' returned key {key!r}: {exc}"
                    ) from None
                if art in out:  # 'train_data' and TrainData are one artifact
                    raise StageOutputError(
                        f"stage '{self.name}' returned two values for artifact '{art}' (keys "
                        f"{_key_shown(keys[art])} and {_key_shown(key)} name the same "
                        f"artifact): return one value per artifact"
                    )
                out[art], keys[art] = value, key
        elif self.declared_outputs and isinstance(result, tuple) and len(result) == len(
            self.declared_outputs
        ):
            out = dict(zip(self.declared_outputs, result, strict=True))
        else:
            raise StageOutputError(
                f"stage '{self.name}' returned a {type(result).__name__}, not a dict: return "
                f"{{'name': value}} for each artifact, or declare @stage(outputs='name')"
            )
        if self.declared_outputs is not None and set(out) != set(self.declared_outputs):
            raise StageOutputError(
                f"stage '{self.name}' declares outputs {list(self.declared_outputs)} but "
                f"returned {list(out)}: make them match"
            )
        return out

    # -- calling -----------------------------------------------------------------------------
    def resolve_params(self, given: Mapping[str, Any] | None) -> dict[str, Any]:
        """Defaults merged with ``given``; raise a ``ParameterError`` that says how to fix it."""
        if not given and not self.params:
            return {}
        given = dict(given or {})
        unknown = [k for k in given if k not in self.params]
        if unknown and not self.accepts_any_param:
            takes = ", ".join(self.params) or "no parameters"
            raise ParameterError(
                f"stage '{self.name}' has no parameter {unknown[0]!r} (it takes: {takes})"
            )
        resolved = {}
        for pname, default in self.params.items():
            if pname in given:
                resolved[pname] = given.pop(pname)
            elif default is REQUIRED:
                raise ParameterError(
                    f"stage '{self.name}' needs parameter '{pname}': pass "
                    f"Pipeline(params={{'{self.name}': {{'{pname}': ...}}}}) "
                    f"or run(..., params={{'{self.name}': {{'{pname}': ...}}}})"
                )
            else:
                resolved[pname] = default
        resolved.update(given)  # only when accepts_any_param
        return resolved

    def call(self, inputs: Mapping[str, Any], params: Mapping[str, Any]) -> Any:
        """Run the stage's code on loaded inputs; return what it returned."""
        raise NotImplementedError

    def take_attachments(self) -> dict[str, Any]:
        """Side values of the last call to store with the result (e.g. captured output)."""
        return {}

    def for_worker(self) -> "Stage":
        """The stage as sent to an executor that runs it in another process (a Dask
        cluster, a process pool): itself, pickled with what its code reaches. A notebook cell
        is sent as a ``CellOnWorker``."""
        return self

    rechecks_after_run: ClassVar[bool] = True
    """Whether the fingerprint is computed again after a run, to store the result also for
    what the stage changed while running (see ``_execute._store_after_run``)."""

    # -- what the fingerprint looks at -------------------------------------------------------
    def code_objects(self) -> list[Any]:
        """Functions/classes whose code is this stage's own code."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} inputs={self.inputs} outputs={self.outputs}>"


def _env_names(stage_name: str, env: Any) -> tuple[str, ...]:
    """The environment variables a stage declares it depends on, checked."""
    if isinstance(env, str):
        env = [env]
    if env is not None and not isinstance(env, (list, tuple, set, frozenset)):
        raise StageDefinitionError(
            f"stage '{stage_name}': env={env!r} ({type(env).__name__}) is not a list of "
            f"environment variable names: pass env=['VAR', ...], e.g. env=['CUDA_VISIBLE_DEVICES']")
    names = tuple(dict.fromkeys(env or ()))
    for var in names:
        if not isinstance(var, str) or not var or "=" in var or "\0" in var:
            raise StageDefinitionError(
                f"stage '{stage_name}': {var!r} is not an environment variable name: pass "
                f"env=['VAR', ...] with names such as 'CUDA_VISIBLE_DEVICES'")
    return names


def _key_name(key: Any) -> str:
    return artifact_name(key)


def _key_shown(key: Any) -> str:
    return key.__name__ if isinstance(key, type) else repr(key)


class FunctionStage(Stage):
    """A function as a stage: positional parameters are inputs, keyword-only are parameters."""

    kind = "function"

    def __init__(self, fn: Callable, name: str | None = None, outputs: Any = None,
                 env: Iterable[str] = (), **policies: Any):
        self.fn = fn
        name = fn.__name__ if name is None else name
        inputs: list[str] = []
        defaults: dict[str, Any] = {}
        params: dict[str, Any] = {}
        any_param = False
        for p in inspect.signature(fn).parameters.values():
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
                inputs.append(_annotation_artifact(p.annotation, fn) or p.name)
                if p.default is not p.empty:
                    defaults[inputs[-1]] = p.default
            elif p.kind is p.KEYWORD_ONLY:
                params[p.name] = p.default
            elif p.kind is p.VAR_KEYWORD:
                any_param = True
            else:
                raise StageDefinitionError(
                    f"function stage '{name}' takes *{p.name}: name each input as its own "
                    f"positional parameter"
                )
        super().__init__(name, inputs, params, outputs, accepts_any_param=any_param, env=env,
                         **policies)
        self.input_defaults = defaults
        if outputs is None:
            self.inferred_outputs = _literal_return_keys(fn)

    def call(self, inputs, params):
        result = self.fn(*(inputs[i] for i in self.inputs), **params)
        return _awaited(self, self.fn, result)

    def code_objects(self):
        return [self.fn]

    def param_code(self) -> dict[Any, bool]:
        code = getattr(self.fn, "__code__", None)
        return {code: False} if code is not None else {}  # keyword-only: the parameters


class ClassStage(Stage):
    """A class as a stage: ``__init__`` arguments are parameters, ``run()``'s are inputs."""

    kind = "class"

    def __init__(self, cls: type, name: str | None = None, outputs: Any = None,
                 env: Iterable[str] = (), **policies: Any):
        self.cls = cls
        name = cls.__name__ if name is None else name
        run = getattr(cls, "run", None)
        if not callable(run):
            raise StageDefinitionError(
                f"class stage '{name}' ({cls.__qualname__}) has no run() method: define "
                f"run(self, <inputs>) returning {{'artifact': value}}"
            )
        inputs = []
        for p in list(inspect.signature(run).parameters.values())[1:]:
            if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                raise StageDefinitionError(
                    f"class stage '{name}': run() takes *{p.name}: name each input"
                )
            inputs.append(_annotation_artifact(p.annotation, run) or p.name)
        params: dict[str, Any] = {}
        any_param = False
        init = vars(cls).get("__init__") or inspect.getattr_static(cls, "__init__")
        if init is not object.__init__:
            for p in list(inspect.signature(init).parameters.values())[1:]:
                if p.kind is p.VAR_KEYWORD:
                    any_param = True
                elif p.kind is p.VAR_POSITIONAL:
                    continue
                else:
                    params[p.name] = p.default
        super().__init__(name, inputs, params, outputs, accepts_any_param=any_param, env=env,
                         **policies)
        if outputs is None:
            self.inferred_outputs = _literal_return_keys(run)

    def call(self, inputs, params):
        instance = self.cls(**params)
        return _awaited(self, instance.run, instance.run(*(inputs[i] for i in self.inputs)))

    def code_objects(self):
        return [self.cls]

    def param_code(self) -> dict[Any, bool]:
        init = vars(self.cls).get("__init__")
        code = getattr(init, "__code__", None)
        return {code: True} if code is not None else {}  # every argument: a parameter


def _awaited(st: Stage, fn: Callable, result: Any) -> Any:
    """What a function or ``run`` method returned, awaited when it is ``async def`` (see
    ``_aio.run_to_completion``). An awaitable from a plain ``def`` is a mistake (a call
    missing its ``await``): stored, it would fail as an unpicklable output, far from it."""
    if not inspect.isawaitable(result):
        return result
    if inspect.iscoroutine(result) and is_async_callable(fn):
        return run_to_completion(result)
    if inspect.iscoroutine(result):
        result.close()  # never run: no "coroutine ... was never awaited" warning
    what = getattr(fn, "__qualname__", st.name)
    raise StageOutputError(
        f"stage '{st.name}' returned a {type(result).__name__} instead of its result: "
        f"{what} is a plain def, so nothing awaits it. await it inside the stage and make "
        f"the stage async def (PipeLite awaits async stages), e.g. "
        f"async def {what.rsplit('.', 1)[-1]}(...): return {{'name': await ...}}")


def _is_async_code(code: types.CodeType | None) -> bool:
    return code is not None and bool(code.co_flags & inspect.CO_COROUTINE)


def compile_cell(source: str, filename: str) -> types.CodeType:
    """A cell's code, compiled as a notebook runs it: a top-level ``await`` is allowed (the
    code object is then a coroutine's, run by ``run_cell_code``)."""
    return compile(source, filename, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)


def run_cell_code(body: types.CodeType, last: types.CodeType | None, ns: dict) -> Any:
    """Run a cell's compiled statements, then its last expression (when given: its value is
    returned), in ``ns``. A cell with a top-level ``await`` runs as one coroutine, run to
    completion as an ``async def`` stage is: what its statements make on the loop (a client
    session, a queue), its last expression can still await."""
    if not (_is_async_code(body) or _is_async_code(last)):
        exec(body, ns)  # noqa: S102 - the user's own cell
        return None if last is None else eval(last, ns)  # noqa: S307 - its last expression

    async def cell() -> Any:
        if _is_async_code(body):
            await eval(body, ns)  # noqa: S307 - the user's own cell, as a coroutine
        else:
            exec(body, ns)  # noqa: S102
        if last is None:
            return None
        value = eval(last, ns)  # noqa: S307
        return (await value) if _is_async_code(last) else value

    return run_to_completion(cell())


_MISSING: Any = object()  # "not bound" in namespace snapshots


class CellStage(Stage):
    """A block of Python source (a notebook cell) run in a namespace, as a stage.

    Inputs are bound into ``user_ns`` (the ``namespace`` given) before the code runs; outputs
    are the names it binds. ``execute(source, namespace)`` runs the code (it may return the
    attachments to store, or a coroutine that runs the code and returns them: a cell with a
    top-level ``await``, run to completion like an ``async def`` stage); the default is
    ``exec`` (a top-level ``await`` allowed). ``hidden`` maps names the host put in the
    namespace (IPython's ``open``, ``exit``...) to their values: while they hold those values
    they count as unbound.

    Freshness reads the namespace through ``namespace``: a read-only view of it *as the cell
    finds it before it runs*. A name the cell reads and also binds (``if F: x = 1`` then
    ``y = x``) shows there with the value it had before the cell last ran (or as unbound)
    for as long as the namespace holds what the cell left in it, so that running or loading
    a cell never makes it stale by itself.
    """

    kind = "cell"

    def __init__(
        self,
        name: str,
        source: str,
        namespace: dict,
        inputs: Iterable[str] = (),
        outputs: Iterable[str] | None = None,
        execute: Callable[[str, dict], Any] | None = None,
        filename: str | None = None,
        env: Iterable[str] = (),
        hidden: Mapping[str, Any] | None = None,
        analysis: "CellAnalysis | None" = None,
        origin: str | None = None,
        files: Iterable[Any] = (),
        out_files: Mapping[str, Any] | None = None,
        **policies: Any,
    ):
        """``analysis``: another ``CellStage``'s ``analysis`` of the same ``source`` (it is of
        the code alone), to spare analysing it again. ``origin``: the notebook that defines
        the cell (see ``Stage.origin``)."""
        from ._cellcode import analyze

        self.source = source
        self.user_ns = namespace
        self.hidden = dict(hidden or {})
        self.analysis = analysis if analysis is not None else analyze(source)
        self._execute = execute
        self.filename = filename or f"<stage {name}>"
        outs = tuple(outputs) if outputs is not None else self.analysis.outputs
        super().__init__(name, inputs, {}, None, env=env, origin=origin, **policies)
        unread = sorted(self.ignore - set(self.analysis.free))
        if unread:
            raise StageDefinitionError(
                f"stage '{name}': --ignore {' '.join(unread)}: the cell reads no global of "
                f"that name; give the names of globals it reads")
        from ._files import File

        self.files = tuple(File(f) for f in files)
        # ``--out-file``: artifacts that are files the cell writes, by name
        self.out_files = {_validate_artifact_str(n): File(f)
                          for n, f in (out_files or {}).items()}
        both = [o for o in self.out_files if o in outs]
        if both:
            raise StageDefinitionError(
                f"stage '{name}': '{both[0]}' is both a name the cell binds and a file output "
                f"(--out-file): give the file another name, e.g. --out-file "
                f"{both[0]}_file={self.out_files[both[0]].key}")
        outs = (*outs, *self.out_files)
        self.declared_outputs = tuple(_validate_artifact_str(o) for o in outs)
        _refuse_duplicate_outputs(name, self.declared_outputs)
        # names the cell may read and also binds: name -> (what the cell left, what was before)
        self._self_read = frozenset(self.analysis.free) & frozenset(self.analysis.bound)
        self._left: dict[str, tuple[Any, Any]] = {}
        self._view = _BeforeCellView(self)

    @property
    def namespace(self) -> Mapping[str, Any]:
        """The namespace as the cell's reads find it before it runs (read-only)."""
        return self._view

    @property
    def blind_spots(self) -> tuple[str, ...]:
        """What the cell does that PipeLite cannot see into (shell commands, magics)."""
        return self.analysis.blind_spots

    @property
    def reads(self) -> tuple[str, ...]:
        """Global names the code reads that are not its inputs (helpers and globals), decided
        against the namespace now: a builtin's name counts only where the namespace binds it
        (shadowing the builtin); a name the cell binds on some paths only, only where it was
        bound before the cell."""
        import builtins

        view = self._view
        names = []
        for n in self.analysis.free:
            if n in self.inputs:
                continue
            if n not in view and (n in self.analysis.maybe or hasattr(builtins, n)):
                continue
            names.append(n)
        return tuple(names)

    def inherit(self, previous: "Stage | None") -> None:
        """Carry over what an earlier definition of this cell left in the same namespace."""
        if isinstance(previous, CellStage) and previous.user_ns is self.user_ns:
            self._left = {n: v for n, v in previous._left.items() if n in self._self_read}

    def definitions(self) -> list[ast.stmt]:
        """The cell's top-level ``import``, ``def`` and ``class`` statements (with their
        decorators), in source order: what binds its modules, functions and classes."""
        from ._cellcode import definitions

        return definitions(self.source)

    def snapshot(self) -> dict[str, Any]:
        """The values of the names the cell reads and binds, before it (or loading it) binds."""
        return {n: self.user_ns.get(n, _MISSING) for n in self._self_read}

    def settle(self, before: Mapping[str, Any]) -> None:
        """Remember what the cell (or loading its results) left in the namespace, and what
        was there before: ``before`` is a ``snapshot()`` taken just before."""
        for n, old in before.items():
            new = self.user_ns.get(n, _MISSING)
            if new is old:
                continue
            if n in self._left and old is self._left[n][0]:
                old = self._left[n][1]  # rerun: before is still what preceded the first run
            if new is _MISSING:
                self._left.pop(n, None)
            else:
                self._left[n] = (new, old)

    def call(self, inputs, params):
        ns = self.user_ns
        ns.update(inputs)
        self._attachments: dict[str, Any] = {}
        before = self.snapshot()
        try:
            if self._execute is not None:
                extra = self._execute(self.source, ns)
                if inspect.iscoroutine(extra):  # a cell with top-level await, left to us
                    extra = run_to_completion(extra)
                if isinstance(extra, dict):
                    self._attachments = extra
            else:
                run_cell_code(compile_cell(self.source, self.filename), None, ns)
        finally:
            self.settle(before)
        ns.update(self.out_files)
        missing = [o for o in self.declared_outputs if o not in ns]
        if missing:
            raise StageOutputError(
                f"stage '{self.name}' did not bind {missing}: assign them in the cell or "
                f"change its outputs (-o)"
            )
        return {o: ns[o] for o in self.declared_outputs}

    def take_attachments(self) -> dict[str, Any]:
        extra, self._attachments = getattr(self, "_attachments", {}), {}
        return extra

    def code_objects(self):
        return []

    compiled: "tuple[types.CodeType, types.CodeType | None] | None" = None
    """The cell compiled as its host runs it: its statements, and its last expression (shown
    when not None); None: ``source`` is compiled when it is sent."""

    output_attachment: str | None = None
    """Under what name the host stores a run's captured output (``execute`` returns it);
    a cell run on a worker captures its prints under that name too."""

    def for_worker(self) -> "CellOnWorker":
        view = self._view
        values = {n: view[n] for n in self.reads if n in view}
        body, last = self.compiled or (compile_cell(self.source, self.filename), None)
        sent = CellOnWorker(self.name, body, last, values, self.inputs,
                            self.declared_outputs, origin=self.origin,
                            output_attachment=self.output_attachment)
        sent.files, sent.out_files = self.files, dict(self.out_files)
        sent.cache, sent.ignore, sent.expires_after = self.cache, self.ignore, self.expires_after
        return sent


class CellOnWorker(Stage):
    """A notebook cell as sent to a worker process: its compiled code (with its cell's file
    name, so a traceback names the cell and line), the values of the globals it reads as
    they were when it was sent (helpers defined in the notebook go by value, modules by
    name), and the names of its outputs. It runs in a namespace of its own: what it binds
    reaches the kernel only as its outputs, loaded from the store. Its prints are captured
    (and still written to the worker's own output) for the kernel to show them."""

    kind = "cell"
    rechecks_after_run = False  # it cannot change the kernel's state: the fingerprint holds

    def __init__(self, name: str, body: types.CodeType, last: types.CodeType | None,
                 values: Mapping[str, Any], inputs: Iterable[str],
                 outputs: Iterable[str] | None, origin: str | None = None,
                 output_attachment: str | None = None):
        super().__init__(name, inputs, {}, None, origin=origin)
        self.declared_outputs = tuple(outputs or ())
        self.body, self.last = body, last
        self.values = dict(values)
        self.output_attachment = output_attachment
        self._attachments: dict[str, Any] = {}
        self.out_files: dict[str, Any] = {}

    def call(self, inputs: Mapping[str, Any], params: Mapping[str, Any]) -> Any:
        import builtins
        import sys

        ns: dict[str, Any] = {"__name__": "__main__", "__builtins__": builtins}
        ns.update(self.values)
        ns.update(inputs)
        ns.update(self.out_files)
        events: list[dict[str, Any]] = []
        out, err = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = _Echo(out, "stdout", events), _Echo(err, "stderr", events)
        try:
            # a cell with top-level await: asyncio.run here (a worker's threads run no loop)
            value = run_cell_code(self.body, self.last, ns)
            if value is not None:  # its last expression, shown
                events.append({"display": {"data": _mimebundle(value), "metadata": {}}})
        finally:
            sys.stdout, sys.stderr = out, err
            if self.output_attachment is not None:
                self._attachments = {self.output_attachment: events}
        names = self.declared_outputs or ()
        missing = [o for o in names if o not in ns]
        if missing:
            raise StageOutputError(
                f"stage '{self.name}' did not bind {missing}: assign them in the cell or "
                f"change its outputs (-o)")
        return {o: ns[o] for o in names}

    def take_attachments(self) -> dict[str, Any]:
        extra, self._attachments = self._attachments, {}
        return extra

    def code_objects(self) -> list[Any]:
        return []

    def __getstate__(self) -> dict[str, Any]:
        # the code as marshal keeps it, with its cell's file name: pickled as code, it would
        # arrive as "<dynamic-code>" and a worker's traceback could not name the cell (a
        # cluster runs one Python version, as cloudpickle needs anyway)
        import marshal

        state = self.__dict__.copy()
        state["body"] = marshal.dumps(self.body)
        state["last"] = None if self.last is None else marshal.dumps(self.last)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        import marshal

        state["body"] = marshal.loads(state["body"])  # noqa: S302 - our own kernel's code
        if state["last"] is not None:
            state["last"] = marshal.loads(state["last"])  # noqa: S302
        self.__dict__.update(state)


class _Echo:
    """A worker's stdout or stderr while a cell runs there: written through, and what this
    thread writes is kept (a worker runs other tasks in other threads meanwhile)."""

    def __init__(self, target: Any, name: str, events: list[dict[str, Any]]):
        import threading

        self._target, self._name, self._events = target, name, events
        self._thread = threading.get_ident()

    def write(self, text: str) -> int:
        import threading

        if text and threading.get_ident() == self._thread:
            events = self._events
            if events and events[-1].get("stream") == self._name:
                events[-1]["text"] += text
            else:
                events.append({"stream": self._name, "text": text})
        return self._target.write(text)

    def flush(self) -> None:
        self._target.flush()

    def __getattr__(self, attr: str) -> Any:
        return getattr(self._target, attr)


def _mimebundle(value: Any) -> dict[str, str]:
    """How a cell's last value is shown without IPython: its repr, and its HTML when it has
    one (a data frame)."""
    data = {"text/plain": repr(value)}
    html = getattr(value, "_repr_html_", None)
    if callable(html):
        try:
            shown = html()
        except Exception:  # noqa: BLE001 - a broken _repr_html_: the repr is enough
            shown = None
        if isinstance(shown, str):
            data["text/html"] = shown
    return data


class _BeforeCellView(_AbcMapping):
    """``CellStage.namespace``: the user namespace as the cell finds it before it runs."""

    def __init__(self, st: CellStage):
        self._st = st

    def __getitem__(self, name: str) -> Any:
        st = self._st
        value = st.user_ns[name]
        left = st._left.get(name)
        if left is not None and value is left[0]:
            value = left[1]
        if value is _MISSING or (name in st.hidden and value is st.hidden[name]):
            raise KeyError(name)
        return value

    def __contains__(self, name: object) -> bool:
        try:
            self[name]  # type: ignore[index]
        except KeyError:
            return False
        return True

    def __iter__(self) -> Iterator[str]:
        return (n for n in list(self._st.user_ns) if n in self)

    def __len__(self) -> int:
        return sum(1 for _ in self)


def _literal_return_keys(fn: Callable) -> tuple[str, ...] | None:
    """Keys of ``return {...}`` literals in ``fn``, when every return is such a literal."""
    try:
        source = textwrap.dedent(inspect.getsource(fn))
        tree = ast.parse(source)
    except (OSError, TypeError, SyntaxError, IndentationError):
        return None
    fdef = tree.body[0] if tree.body else None
    if not isinstance(fdef, (ast.FunctionDef, ast.AsyncFunctionDef)):
        return None
    returns: list[ast.Return] = []
    stack: list[ast.AST] = list(fdef.body)
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)):
            continue
        if isinstance(node, ast.Return):
            returns.append(node)
        stack.extend(ast.iter_child_nodes(node))
    if not returns:
        return None
    keys: list[str] = []
    fn_globals = getattr(fn, "__globals__", {})
    for ret in returns:
        if not isinstance(ret.value, ast.Dict):
            return None
        for k in ret.value.keys:
            if isinstance(k, ast.Constant) and isinstance(k.value, str) and k.value.isidentifier():
                name = k.value
            elif isinstance(k, ast.Name) and _annotation_artifact(fn_globals.get(k.id)):
                name = fn_globals[k.id].name
            else:
                return None
            if name not in keys:
                keys.append(name)
    return tuple(keys)


class Registry:
    """The stages declared in this process, by name. Re-registering a name replaces it."""

    def __init__(self) -> None:
        self._stages: dict[str, Stage] = {}
        self._producers: dict[str, str] = {}  # artifact -> stage name, kept in step
        self._unknown: set[str] = set()  # stages whose outputs are not known yet

    def add(self, st: Stage) -> Stage:
        """Register ``st``; raise ``DuplicateProducerError`` if another stage makes its outputs."""
        self._check_producers(st, st.outputs or ())
        self.remove(st.name)
        self._stages[st.name] = st
        self._index(st)
        return st

    def _index(self, st: Stage) -> None:
        if st.outputs is None:
            self._unknown.add(st.name)
        for out in st.outputs or ():
            self._producers[out] = st.name

    def _check_producers(self, st: Stage, outputs: Iterable[str]) -> None:
        for out in outputs:
            other = self._producers.get(out)
            if other is not None and other != st.name:
                raise DuplicateProducerError(
                    f"artifact '{out}' would be produced by both stage '{other}' and stage "
                    f"'{st.name}': every artifact has exactly one producer. Give the output of "
                    f"'{st.name}' another name; or, if '{other}' is obsolete, remove it with "
                    f"pipelite.REGISTRY.remove('{other}')"
                )

    def learn_outputs(self, st: Stage, outputs: Iterable[str]) -> None:
        """Record the outputs a stage actually produced (checked for a second producer)."""
        outputs = tuple(outputs)
        if st.outputs != outputs:
            self._check_producers(st, outputs)
        if self._stages.get(st.name) is st:
            self._unindex(st.name)
            st.learnt_outputs = outputs
            self._index(st)
        else:
            st.learnt_outputs = outputs

    def _unindex(self, name: str) -> None:
        self._unknown.discard(name)
        for out in [o for o, n in self._producers.items() if n == name]:
            del self._producers[out]

    def remove(self, name: str) -> None:
        """Forget the stage called ``name`` (its stored results stay in the store)."""
        if self._stages.pop(name, None) is not None:
            self._unindex(name)

    def clear(self) -> None:
        """Forget every stage."""
        self._stages.clear()
        self._producers.clear()
        self._unknown.clear()

    def producers(self) -> Mapping[str, str]:
        """Artifact name -> name of the registered stage that produces it (read-only view)."""
        return types.MappingProxyType(self._producers)

    def with_unknown_outputs(self) -> list[Stage]:
        """Registered stages whose outputs are not known yet (not declared, never run)."""
        return [self._stages[n] for n in self._unknown]

    def get(self, name: str) -> Stage | None:
        return self._stages.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self._stages

    def __iter__(self) -> Iterator[Stage]:
        return iter(list(self._stages.values()))

    def __len__(self) -> int:
        return len(self._stages)

    def names(self) -> list[str]:
        return list(self._stages)


REGISTRY = Registry()


def stage(name_or_obj: Any = None, *, outputs: Any = None, name: str | None = None,
          env: Iterable[str] = (), registry: Registry | None = None, cache: bool = True,
          ignore: Iterable[str] = (), expires_after: Any = None) -> Any:
    """Declare a class or a function as a pipeline stage and register it.

    >>> @stage("gen_data")
    ... class GenerateTrainData:
    ...     def run(self):
    ...         return {"train_data": [1, 2, 3]}

    Forms: ``@stage``, ``@stage("name")``, ``@stage(outputs="art")``,
    ``@stage(name=..., outputs=...)``.
    ``env=["VAR", ...]`` adds environment variables to the stage's fingerprint.
    Policies: ``cache=False`` (always runs, never stored), ``ignore=["verbose"]`` (parameters
    or globals left out of the fingerprint), ``expires_after="1d"`` (a result older than that
    is stale).
    The decorated object is returned unchanged (it stays usable as plain Python).
    """
    reg = REGISTRY if registry is None else registry

    def decorate(obj: Any, stage_name: str | None) -> Any:
        policies = {"cache": cache, "ignore": ignore, "expires_after": expires_after}
        if isinstance(obj, type):
            st: Stage = ClassStage(obj, stage_name, outputs, env=env, **policies)
        elif callable(obj) and hasattr(obj, "__code__"):
            st = FunctionStage(obj, stage_name, outputs, env=env, **policies)
        else:
            raise StageDefinitionError(
                f"@stage decorates a class or a function, not {type(obj).__name__}"
            )
        reg.add(st)
        try:
            obj.__pipelite_stage__ = st
        except (AttributeError, TypeError):
            pass
        return obj

    def decorate_or_raise(obj: Any, stage_name: str | None) -> Any:
        try:
            return decorate(obj, stage_name)
        except PipeliteError as exc:  # show the user's decorator line, not our internals
            raise at_the_call(exc) from None

    if name_or_obj is not None and not isinstance(name_or_obj, str):
        return decorate_or_raise(name_or_obj, name)
    if name_or_obj is not None and name is not None:
        raise StageDefinitionError("give the stage name once: @stage('name') or @stage(name=...)")
    stage_name = name_or_obj if name_or_obj is not None else name
    if stage_name is not None:
        validate_stage_name(stage_name)
    return lambda obj: decorate_or_raise(obj, stage_name)


def stage_of(obj: Any) -> Stage | None:
    """The ``Stage`` that ``@stage`` attached to a class or function, if any."""
    return getattr(obj, "__pipelite_stage__", None)

