"""JupyterLab on the checkout (``make lab``): opening a notebook and closing it untouched asks nothing and changes
nothing.

The committed notebooks carry no ``language_info`` (a kernel's facts, stripped by the git filter and the pre-save
hook in :mod:`icrl_lib.notebook`). JupyterLab writes the kernel's ``language_info`` into a notebook it opens, and a
value that differs from the file's marks the notebook modified: closing it then asked "Save your work?" (seen in
Chromium). :class:`ContentsManager` serves each notebook with this interpreter's ``language_info`` already in its
metadata, so the kernel's write changes nothing; the file on disk is never touched by it.
"""
from __future__ import annotations

import sys
from typing import Any

from jupyter_server.services.contents.largefilemanager import AsyncLargeFileManager


def kernel_language_info() -> dict[str, Any]:
    """What an ipykernel of this interpreter reports as ``language_info`` (the kernel ``make lab`` starts)."""
    try:
        from ipykernel.ipkernel import IPythonKernel

        return dict(IPythonKernel.language_info)
    except ImportError:  # no ipykernel here: the fields ipykernel has reported since 4.x
        version = sys.version.split()[0]
        return {"name": "python", "version": version, "mimetype": "text/x-python",
                "codemirror_mode": {"name": "ipython", "version": sys.version_info[0]},
                "pygments_lexer": f"ipython{sys.version_info[0]}", "nbconvert_exporter": "python",
                "file_extension": ".py"}


class ContentsManager(AsyncLargeFileManager):
    """Jupyter server's default contents manager, serving Python notebooks with this interpreter's
    ``language_info`` (``--ServerApp.contents_manager_class=icrl_lib.jupyter.ContentsManager``)."""

    async def get(self, path: str, content: bool = True, type: str | None = None, format: str | None = None,
                  **kwargs: Any) -> dict[str, Any]:
        model = await super().get(path, content=content, type=type, format=format, **kwargs)
        if model.get("type") == "notebook" and model.get("content") is not None:
            metadata = model["content"].setdefault("metadata", {})
            if metadata.get("kernelspec", {}).get("language", "python") == "python":
                metadata.setdefault("language_info", kernel_language_info())
        return model
