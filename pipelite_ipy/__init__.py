"""The PipeLite IPython extension: notebook cells as cached pipeline stages.

>>> %load_ext pipelite          # or: %load_ext pipelite_ipy
>>> %%stage train_model
... model_weights = train_data.mean(axis=0)

``%%stage`` and ``%pipelite`` are registered on load; ``current_session()`` is the loaded
extension's ``PipeliteSession`` (its ``pipeline`` and ``run``). Nothing heavy is imported
here: the panel (ipywidgets) loads on first use.
"""
from __future__ import annotations

import typing

if typing.TYPE_CHECKING:
    from typing import Any

    from .session import PipeliteSession

__all__ = ["current_session", "load_ipython_extension", "unload_ipython_extension"]

_session: "PipeliteSession | None" = None


def current_session() -> "PipeliteSession | None":
    """The session of the loaded extension, or None when it is not loaded."""
    return _session


def load_ipython_extension(ip: Any) -> None:
    """``%load_ext pipelite``: register the magics and a session bound to ``ip``."""
    global _session
    from .magics import PipeliteMagics, StageCellAwaiter
    from .session import PipeliteSession

    if _session is not None:  # loaded under the other name, or into another shell
        unload_ipython_extension(_session.shell)
    _session = PipeliteSession(ip)
    ip.register_magics(PipeliteMagics(ip, _session))
    ip.input_transformers_post.append(StageCellAwaiter(ip))  # %%stage cells that await


def unload_ipython_extension(ip: Any) -> None:
    """``%unload_ext pipelite``: unregister the magics and stop listening to stage events."""
    global _session
    magics = ip.magics_manager.magics
    for kind, name in (("cell", "stage"), ("line", "pipelite")):
        fn = magics[kind].get(name)
        if type(getattr(fn, "__self__", None)).__name__ == "PipeliteMagics":
            del magics[kind][name]
    ip.magics_manager.registry.pop("PipeliteMagics", None)
    ip.input_transformers_post[:] = [t for t in ip.input_transformers_post
                                     if type(t).__name__ != "StageCellAwaiter"]
    if _session is not None and _session.shell is ip:
        _session.close()
        _session = None
