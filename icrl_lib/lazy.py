"""A package's public names, imported on first use: ``import icrl_lib.engine`` must not import torch, nor
``python -m icrl_lib --help`` plotly, only because a package names them (the scientific Python ecosystem's SPEC 1
pattern, without its dependency)."""
from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Iterable, Mapping


def lazy_exports(package: str, modules: Iterable[str] = (), names: Mapping[str, Iterable[str]] | None = None
                 ) -> tuple[Callable[[str], object], Callable[[], list[str]], list[str]]:
    """``__getattr__``, ``__dir__`` and ``__all__`` for ``package``: its public sub-``modules``, and ``names`` (module,
    relative to ``package`` -> the public names it defines), each imported when first looked up."""
    modules = tuple(modules)
    where = {name: module for module, defined in (names or {}).items() for name in defined}
    public = sorted({*modules, *where})

    def __getattr__(name: str) -> object:
        if name in modules:
            return importlib.import_module(f"{package}.{name}")
        if name in where:  # looked up each time, not kept: a name patched in its module (tests) is seen here too
            return getattr(importlib.import_module(f"{package}.{where[name]}"), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted({*vars(sys.modules[package]), *public})

    return __getattr__, __dir__, public
