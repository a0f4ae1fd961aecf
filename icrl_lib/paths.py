"""The checkout folder, and relative paths resolved against it (one rule for notebooks, params and task files)."""
from __future__ import annotations

import os
from pathlib import Path


def project_root(start: str | os.PathLike | None = None) -> Path:
    """The checkout folder (has pyproject.toml and icrl_lib/) at or above ``start`` (default: the cwd).

    Kernels start in the notebook's folder under nbval and JupyterLab but in the caller's folder under papermill;
    resolving relative paths against the checkout makes ``outputs/`` mean the same folder in all three.
    Falls back to the cwd outside a checkout.
    """
    here = Path(start or os.getcwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "pyproject.toml").is_file() and (folder / "icrl_lib").is_dir():
            return folder
    return here


def resolve_path(path: str | os.PathLike) -> Path:
    """``path`` if absolute, else relative to :func:`project_root`."""
    path = Path(path).expanduser()
    return path if path.is_absolute() else project_root() / path


def find_file(path: str | os.PathLike) -> Path | None:
    """An existing file at ``path`` as given (relative to the cwd), else relative to the checkout; None if neither."""
    path = Path(path).expanduser()
    for candidate in ([path] if path.is_absolute() else [path, project_root() / path]):
        if candidate.is_file():
            return candidate
    return None
