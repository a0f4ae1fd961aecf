"""Task files: one YAML file declares a classification task (data source, columns, labels, prompt wording).

The five paper tasks are such files, shipped in ``icrl_lib/tasks/registry/``; ``task_name`` is one of their names or a
path to a user's file (``examples/support_tickets/task.yaml``). Reading a file checks every field and names it with
the file in any error, before data or a model is touched. Fields (see the README, "Your own task")::

    name: support_tickets              # run folders and tables; letters, digits, _ and -
    input_prefix: "Ticket:"            # the user turn: "<input_prefix> <text>"
    prediction_prefix: "Team:"         # the assistant turn starts with it; the label follows
    description: "..."                 # optional, one line, appended to the system prompt
    source:                            # local files (paths relative to this file) ...
      files: {train: tickets.csv, test: tickets_test.csv}   # .csv, .jsonl, .parquet; test optional
    # ... or a hub dataset:  source: {hub: owner/name, config: default, revision: ..., splits: {train: train},
    #                                 mirror: <folder under data_dir with <split>.jsonl, used when present>}
    split: {test_fraction: 0.2, seed: 0}   # required when the source has no test split
    text_column: text
    label_column: label                # string labels, or integer ids with label_names
    label_names: [...]                 # raw names in id order (integer ids), or to fix the order of string labels
    display_names: {raw: shown}        # optional; others follow display_style
    display_style: as_is               # as_is | words (lowercase, "_" -> " ", "?" dropped: the paper's rule)
    drop_labels: [oos]                 # raw names removed, the rest renumbered in order
    allow_labels_without_examples: false   # true keeps declared labels that have no training rows (paper's nlu)
    paper_train_k: 10000               # the paper's training steps on this task (its own tasks only)
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from icrl_lib.errors import UserError
from icrl_lib.paths import find_file, project_root

PACKAGE_TASKS = Path(__file__).with_name("registry")  # the shipped task files, one per registered name
REVISION_PARQUET = "refs/convert/parquet"  # the hub's parquet conversion of every dataset (no loading scripts)
DISPLAY_STYLES = ("as_is", "words")
FILE_FORMATS = (".csv", ".jsonl", ".parquet")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
_FIELDS = ("name", "input_prefix", "prediction_prefix", "description", "source", "split", "text_column",
           "label_column", "label_names", "display_names", "display_style", "drop_labels",
           "allow_labels_without_examples", "paper_train_k")
_SOURCE_FIELDS = {"files": ("files",), "hub": ("hub", "config", "revision", "splits", "mirror")}


@dataclass(frozen=True)
class TaskSpec:
    """A task file, parsed and checked: immutable and hashable (mappings are stored as tuples of pairs)."""

    name: str
    file: str  # the task file, resolved
    input_prefix: str
    prediction_prefix: str
    text_column: str
    label_column: str
    description: str = ""
    paper_train_k: int | None = None  # the paper's training steps on this task (its five tasks: 10,000 or 5,000)
    files: tuple[tuple[str, str], ...] = ()  # split -> path (absolute), for local files
    hub_id: str = ""
    hub_config: str = "default"
    revision: str = REVISION_PARQUET
    hub_splits: tuple[tuple[str, str], ...] = ()  # split -> hub split name
    mirror: str = ""  # folder under a local data_dir holding <hub split>.jsonl (the layout of ../shared/data)
    test_fraction: float | None = None  # cut the test split from train (datasets' train_test_split)
    split_seed: int = 0
    label_names: tuple[str, ...] | None = None
    display_names: tuple[tuple[str, str], ...] = ()
    display_style: str = "as_is"
    drop_labels: tuple[str, ...] = ()
    allow_labels_without_examples: bool = False

    def display(self, raw: str) -> str:
        """The label text shown to the model for the raw class name ``raw``."""
        shown = dict(self.display_names).get(raw)
        if shown is not None:
            return shown
        return raw.lower().replace("_", " ").replace("?", "") if self.display_style == "words" else raw


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
        raise UserError(f"{path}: a task file is a YAML mapping of fields ({', '.join(_FIELDS)})")
    return _parse(doc, path)


def _parse(doc: Mapping[str, Any], path: str) -> TaskSpec:
    def fail(field: str, message: str) -> UserError:
        return UserError(f"{path}: {field}: {message}")

    unknown = sorted(set(doc) - set(_FIELDS))
    if unknown:
        raise fail(unknown[0], f"unknown field; allowed: {', '.join(_FIELDS)}")

    def text(field: str, default: str | None = None, empty: bool = False) -> str:
        value = doc.get(field)
        if value is None:  # absent, or present with no value ("description:")
            if default is None:
                raise fail(field, "required")
            value = default
        if not isinstance(value, str) or (not empty and not value.strip()):
            raise fail(field, f"must be a non-empty string, got {value!r}")
        if "\n" in value:
            raise fail(field, "must be one line")
        return value

    def names(field: str, value: Any) -> tuple[str, ...]:
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise fail(field, f"must be a list of non-empty strings, got {value!r}")
        if len(set(value)) != len(value):
            raise fail(field, f"repeats {sorted({v for v in value if value.count(v) > 1})[0]!r}")
        return tuple(value)

    name = text("name")
    if not _NAME.match(name):
        raise fail("name", f"{name!r}: use letters, digits, _ and - (it names run folders)")
    spec: dict[str, Any] = dict(
        name=name, file=path, input_prefix=text("input_prefix"), prediction_prefix=text("prediction_prefix"),
        text_column=text("text_column", "text"), label_column=text("label_column", "label"),
        description=text("description", "", empty=True))
    steps = doc.get("paper_train_k")
    if steps is not None:
        if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
            raise fail("paper_train_k", f"must be an integer >= 1, got {steps!r}")
        spec["paper_train_k"] = steps
    spec.update(_source(doc.get("source"), Path(path).parent, fail))
    split = doc.get("split")
    if split is not None:
        if not isinstance(split, dict) or set(split) - {"test_fraction", "seed"}:
            raise fail("split", f"a mapping with test_fraction (0 < f < 1) and seed (int), got {split!r}")
        fraction, seed = split.get("test_fraction"), split.get("seed", 0)
        if not isinstance(fraction, (int, float)) or isinstance(fraction, bool) or not 0 < fraction < 1:
            raise fail("split.test_fraction", f"must be a number in (0, 1), got {fraction!r}")
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise fail("split.seed", f"must be an int, got {seed!r}")
        spec.update(test_fraction=float(fraction), split_seed=seed)
    given = set(dict(spec.get("files") or spec.get("hub_splits")))
    if "test" in given and split is not None:
        raise fail("split", "the source already has a test split; give one or the other")
    if "test" not in given and split is None:
        raise fail("split", "the source has no test split: add split: {test_fraction: 0.2, seed: 0} or a test split")
    if "label_names" in doc:
        spec["label_names"] = names("label_names", doc["label_names"])
    display = doc.get("display_names", {}) or {}
    if not isinstance(display, dict) or not all(isinstance(k, (str, int)) and isinstance(v, str) and v
                                                for k, v in display.items()):
        raise fail("display_names", f"must map raw label names to non-empty strings, got {display!r}")
    spec["display_names"] = tuple((str(k), v) for k, v in display.items())
    style = doc.get("display_style", "as_is")
    if style not in DISPLAY_STYLES:
        raise fail("display_style", f"got {style!r}; allowed: {', '.join(DISPLAY_STYLES)}")
    spec["display_style"] = style
    spec["drop_labels"] = names("drop_labels", doc.get("drop_labels", []) or [])
    allow = doc.get("allow_labels_without_examples", False)
    if not isinstance(allow, bool):
        raise fail("allow_labels_without_examples", f"must be true or false, got {allow!r}")
    spec["allow_labels_without_examples"] = allow
    if spec.get("label_names") is not None:
        for field, raws in (("display_names", [k for k, _ in spec["display_names"]]),
                            ("drop_labels", spec["drop_labels"])):
            stray = [r for r in raws if r not in spec["label_names"]]
            if stray:
                raise fail(field, f"{stray[0]!r} is not in label_names")
    return TaskSpec(**spec)


def _source(source: Any, folder: Path, fail) -> dict[str, Any]:
    if not isinstance(source, dict) or not source:
        raise fail("source", "required: files: {train: <file>[, test: <file>]} or hub: <dataset id>")
    kinds = [k for k in _SOURCE_FIELDS if k in source]
    if len(kinds) != 1:
        raise fail("source", f"give exactly one of files or hub, got {sorted(source)}")
    kind = kinds[0]
    stray = sorted(set(source) - set(_SOURCE_FIELDS[kind]))
    if stray:
        raise fail(f"source.{stray[0]}",
                   f"unknown field for a {kind} source; allowed: {', '.join(_SOURCE_FIELDS[kind])}")
    field = "source.files" if kind == "files" else "source.splits"
    splits = source.get(kind) if kind == "files" else source.get("splits", {"train": "train", "test": "test"})
    if not isinstance(splits, dict) or "train" not in splits or set(splits) - {"train", "test"}:
        raise fail(field, f"a mapping with train and optionally test, got {splits!r}")
    for split, value in splits.items():
        if not isinstance(value, str) or not value:
            raise fail(f"{field}.{split}", f"must be a non-empty string, got {value!r}")
    if kind == "files":
        files = []
        for split, value in splits.items():
            path = (folder / value).resolve()
            if path.suffix not in FILE_FORMATS:
                raise fail(f"source.files.{split}",
                           f"{value!r}: unsupported format; allowed: {', '.join(FILE_FORMATS)}")
            if not path.is_file():
                raise fail(f"source.files.{split}", f"no such file {path}")
            files.append((split, str(path)))
        return {"files": tuple(files)}
    out = {"hub_id": source["hub"], "hub_splits": tuple(splits.items())}
    for key, target in (("config", "hub_config"), ("revision", "revision"), ("mirror", "mirror")):
        if key in source:
            if not isinstance(source[key], str) or not source[key]:
                raise fail(f"source.{key}", f"must be a non-empty string, got {source[key]!r}")
            out[target] = source[key]
    if not isinstance(out["hub_id"], str) or out["hub_id"].count("/") != 1:
        raise fail("source.hub", f"a hub dataset id owner/name, got {out['hub_id']!r}")
    return out
