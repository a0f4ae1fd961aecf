"""Task files: one YAML file declares a classification task (data source, columns, labels, prompt wording).

The five paper tasks are such files, shipped in ``icrl_lib/tasks/registry/``; ``task_name`` is one of their names or a
path to a user's file (``params/tasks/support_tickets/task.yaml``). Reading a file checks it against the schema
(:mod:`icrl_lib.tasks.schema`, where each field is declared once with its help) and names the file and the field in
any error, before data or a model is touched.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import yaml

from icrl_lib.errors import UserError
from icrl_lib.paths import find_file, project_root
from icrl_lib.tasks.schema import FIELD_NAMES, TaskSpec, parse_spec

PACKAGE_TASKS = Path(__file__).with_name("registry")  # the shipped task files, one per registered name


def registered() -> tuple[str, ...]:
    """Names of the shipped task files (``banking77``, ``clinic150``, ...)."""
    return tuple(sorted(p.stem for p in PACKAGE_TASKS.glob("*.yaml")))


def paper_train_k(base: str) -> int:
    """The paper's training steps on its task ``base`` (``trec_coarse``: 5,000), from the task file."""
    steps = read_spec(task_file(base)).paper_train_k
    if steps is None:
        raise UserError(f"task_name: {base!r} is not one of the paper's tasks ({', '.join(registered())})")
    return steps


def is_task_path(name: str) -> bool:
    """Whether ``task_name`` (without variant suffixes) names a file rather than a registered task."""
    return name.endswith((".yaml", ".yml")) or "/" in name or "\\" in name


def task_file(base: str) -> Path:
    """The file behind a registered name or a path; UserError naming ``task_name`` when there is none."""
    if is_task_path(base):
        path = find_file(base)  # relative: to the cwd, else the checkout (papermill and JupyterLab agree)
        if path is None:
            raise UserError(f"task_name: no task file {base!r} in the current folder or in {project_root()} (a "
                            f"registered name: {', '.join(registered())}, or a path to a task YAML file)")
        return path.resolve()
    path = PACKAGE_TASKS / f"{base}.yaml"
    if not path.is_file():
        raise UserError(f"task_name: unknown task {base!r}; allowed: {', '.join(registered())} (optionally with "
                        "_top<k> and/or _unsemantic), or a path to a task YAML file")
    return path


def read_spec(path: str | Path) -> TaskSpec:
    """Parse and check one task file (cached by path and modification time)."""
    path = Path(path).resolve()
    try:
        stamp = path.stat().st_mtime_ns
    except OSError as err:
        raise UserError(f"{path}: cannot read the task file ({err.strerror})") from None
    return _read_spec(str(path), stamp)


@lru_cache(maxsize=64)
def _read_spec(path: str, _stamp: int) -> TaskSpec:
    try:
        doc = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark else ""
        raise UserError(f"{path}{line}: not valid YAML ({getattr(err, 'problem', None) or err})") from None
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: cannot read the task file ({err})") from None
    if not isinstance(doc, dict):
        raise UserError(f"{path}: a task file is a YAML mapping of fields ({', '.join(FIELD_NAMES)})")
    return parse_spec(doc, path)
