"""What is a library and what is your code: decided by where a module's file lies.

A module is a library when its file (or, for a namespace package, every folder of it) lies
in one of the interpreter's library locations: the standard library and site-packages. Its
name does not matter: your own ``code.py`` or ``colorsys.py`` next to the notebook is your
code, and ``src/`` without an ``__init__.py`` is too. Libraries count by name and version;
your code counts by what it holds.
"""
from __future__ import annotations

import importlib.machinery
import importlib.metadata
import os
import site
import sys
import sysconfig
import types
from typing import Any

__all__ = ["LIBRARY_ROOTS", "library_locations", "is_library_path", "is_library_module",
           "module_location", "library_token", "forget"]

_OWN_PACKAGES = frozenset({"pipelite", "pipelite_ipy"})


def library_locations() -> list[str]:
    """The interpreter's library folders as configured (not resolved): the standard library,
    site-packages (the user's too) and the ``site-packages``/``dist-packages`` on sys.path."""
    paths = sysconfig.get_paths()
    found = [paths[key] for key in ("stdlib", "platstdlib", "purelib", "platlib")
             if paths.get(key)]
    try:
        found.append(site.getusersitepackages())
    except Exception:  # noqa: BLE001 - some embedded interpreters have no user site
        pass
    found += [p for p in sys.path if p and ("site-packages" in p or "dist-packages" in p)]
    return found


def _library_roots() -> tuple[str, ...]:
    roots = {os.path.realpath(p) for p in library_locations()}
    return tuple(sorted(r.rstrip(os.sep) + os.sep for r in roots))


LIBRARY_ROOTS = _library_roots()
_PIPELITE_DIRS = tuple(
    os.path.realpath(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                  name)) + os.sep for name in _OWN_PACKAGES)
_verdicts: dict[tuple[str, Any], bool] = {}
_versions: dict[str, str] = {}


def forget() -> None:
    """Drop cached verdicts and versions (tests; after installing a package)."""
    _verdicts.clear()
    _versions.clear()


def is_library_path(path: str) -> bool:
    """Whether ``path`` lies in a library location (or in PipeLite itself)."""
    real = os.path.realpath(path)
    roots = LIBRARY_ROOTS + _PIPELITE_DIRS
    return any(real.startswith(root) for root in roots)


def module_location(name: str) -> tuple[str | None, tuple[str, ...]]:
    """(file, package folders) of module ``name``, loaded or not, without importing it.

    ``(None, ())`` when it cannot be found; a namespace package has no file, only folders.
    """
    mod = sys.modules.get(name)
    if mod is not None:
        return _location_of_loaded(mod)
    parent, _, last = name.rpartition(".")
    if parent:
        pfile, pdirs = module_location(parent)
        if not pdirs:
            return None, ()
        search: list[str] | None = list(pdirs)
    else:
        search, last = None, name
    try:
        spec = importlib.machinery.PathFinder.find_spec(last, search)
    except (ImportError, ValueError):
        spec = None
    if spec is None:
        return None, ()
    origin = spec.origin if spec.has_location else None
    dirs = tuple(spec.submodule_search_locations or ())
    return origin, dirs


def _location_of_loaded(mod: types.ModuleType) -> tuple[str | None, tuple[str, ...]]:
    file = getattr(mod, "__file__", None)
    path = getattr(mod, "__path__", None)
    try:
        dirs = tuple(str(p) for p in path) if path is not None else ()
    except TypeError:
        dirs = ()
    return (file if isinstance(file, str) else None), dirs


def is_library_module(name: str) -> bool:
    """Whether the module called ``name`` is a library (see the module docstring)."""
    if not name:
        return True  # objects that name no module come from C code
    if name == "__main__":
        return False
    top = name.partition(".")[0]
    if top in _OWN_PACKAGES or top == "builtins" or name in sys.builtin_module_names:
        return True
    mod = sys.modules.get(name)
    key = (name, id(mod))
    found = _verdicts.get(key)
    if found is not None:
        return found
    verdict = _decide(name, top, mod)
    _verdicts[key] = verdict
    return verdict


def _decide(name: str, top: str, mod: types.ModuleType | None) -> bool:
    file, dirs = _location_of_loaded(mod) if mod is not None else module_location(name)
    if file:
        return is_library_path(file)
    if dirs:  # a namespace package: a library only if every folder of it is
        return all(is_library_path(d) for d in dirs)
    if mod is not None:
        spec = getattr(mod, "__spec__", None)
        if getattr(spec, "origin", None) in ("built-in", "frozen"):
            return True
        if top != name:  # e.g. six.moves: made at run time by its library
            return is_library_module(top)
        return False  # a module made at run time by your code
    # not loaded and not found: a standard module only if it is one by name
    return top in sys.stdlib_module_names


def version_of(top: str) -> str:
    """The version of a library, by its top-level package name."""
    found = _versions.get(top)
    if found is not None:
        return found
    if top in sys.stdlib_module_names or top == "builtins":
        version = "python-" + ".".join(map(str, sys.version_info[:3]))
    else:
        version = "unknown"
        v = getattr(sys.modules.get(top), "__version__", None)
        if isinstance(v, str):
            version = v
        else:
            try:
                for dist in importlib.metadata.packages_distributions().get(top, []):
                    version = importlib.metadata.version(dist)
                    break
            except Exception:  # noqa: BLE001 - metadata is best effort
                pass
    _versions[top] = version
    return version


def library_token(modname: str, qualname: str = "") -> str:
    """A library object by where it comes from and the library's version."""
    top = modname.partition(".")[0]
    return f"lib:{modname}{'.' + qualname if qualname else ''}@{version_of(top)}"
