"""Classification tasks: :func:`load_task` gives a :class:`Task` (labels, train and test :class:`Example` s, prompt
wording) from a registered name (:func:`registered`; ``_top<k>`` and ``_unsemantic`` variants) or a task file
(:class:`TaskSpec`, :func:`read_spec`); :func:`resolve_data_dir` says where its rows are read from."""
from __future__ import annotations

from icrl_lib.lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, names={
    "task": ("Example", "Task", "load_task", "task_label"),
    "files": ("read_spec", "registered"),
    "schema": ("FIELDS", "TaskSpec"),
    "sources": ("data_dir_param", "resolve_data_dir"),
})
