"""Lazy re-exports: a package names its public objects without importing their modules.

A light import (the speaker index, the command line's help) then does not load torch.
"""
import importlib

__all__ = ["lazy_exports"]


def lazy_exports(package, homes):
    """``__getattr__`` and ``__dir__`` of ``package`` for ``{name: submodule}``.

    Example
    -------
    >>> getattr_, dir_ = lazy_exports("speechbrain_mrl.utils", {"atomic_output": "files"})
    >>> getattr_("atomic_output").__name__
    'atomic_output'
    """
    def __getattr__(name):
        if name not in homes:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f"{package}.{homes[name]}"), name)

    def __dir__():
        return sorted(homes)

    return __getattr__, __dir__
