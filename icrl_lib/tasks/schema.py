"""The task file's schema, declared once: each field with its help, its example and the check that reads it.

:data:`FIELDS` is the one declaration: :func:`parse_spec` validates a file's mapping by walking it (unknown fields,
required ones, types, allowed values; every error names the file and the field), the module's help lists it
(``help(icrl_lib.tasks.schema)``, generated below) and the README's example is checked against it. A parsed file is a
:class:`TaskSpec`, immutable and hashable. Fields:
"""
from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from icrl_lib.errors import UserError

REVISION_PARQUET = "refs/convert/parquet"  # the hub's parquet conversion of every dataset (no loading scripts)
DISPLAY_STYLES = ("as_is", "words")
FILE_FORMATS = (".csv", ".jsonl", ".parquet")
SOURCE_FIELDS = {"files": ("files",), "hub": ("hub", "config", "revision", "splits", "mirror")}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")


@dataclass(frozen=True)
class TaskSpec:
    """A task file, parsed and checked (mappings are stored as tuples of pairs)."""

    name: str
    file: str  # the task file, resolved
    input_prefix: str
    prediction_prefix: str
    description: str
    source_kind: str  # files | hub
    files: tuple[tuple[str, str], ...]  # split -> path (absolute), for local files
    hub_id: str
    hub_config: str
    revision: str
    hub_splits: tuple[tuple[str, str], ...]  # split -> hub split name
    mirror: str  # folder under a local data_dir holding <hub split>.jsonl (the layout of ../shared/data)
    test_fraction: float | None  # cut the test split from train (datasets' train_test_split)
    split_seed: int
    text_column: str
    label_column: str
    label_names: tuple[str, ...] | None
    display_names: tuple[tuple[str, str], ...]
    display_style: str
    drop_labels: tuple[str, ...]
    allow_labels_without_examples: bool
    paper_train_k: int | None  # the paper's training steps on this task (its five tasks: 10,000 or 5,000)

    def display(self, raw: str) -> str:
        """The label text shown to the model for the raw class name ``raw``."""
        shown = dict(self.display_names).get(raw)
        if shown is not None:
            return shown
        return raw.lower().replace("_", " ").replace("?", "") if self.display_style == "words" else raw


@dataclass(frozen=True)
class Reading:
    """One file being read: its path (in every error) and its folder (relative data paths)."""

    path: str

    def fail(self, field: str, message: str) -> UserError:
        return UserError(f"{self.path}: {field}: {message}")

    def text(self, field: str, value: Any, default: str | None = None, empty: bool = False) -> str:
        if value is None:  # absent, or present with no value ("description:")
            if default is None:
                raise self.fail(field, "required")
            value = default
        if not isinstance(value, str) or (not empty and not value.strip()):
            raise self.fail(field, f"must be a non-empty string, got {value!r}")
        if "\n" in value:
            raise self.fail(field, "must be one line")
        return value

    def names(self, field: str, value: Any) -> tuple[str, ...]:
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise self.fail(field, f"must be a list of non-empty strings, got {value!r}")
        if len(set(value)) != len(value):
            raise self.fail(field, f"repeats {sorted({v for v in value if value.count(v) > 1})[0]!r}")
        return tuple(value)


@dataclass(frozen=True)
class Field:
    """A task file field: its help line, an example value, and the check that turns its value into spec values."""

    name: str
    help: str
    example: str
    read: Callable[[Reading, Any], dict[str, Any]]


def _name(r: Reading, v: Any) -> dict[str, Any]:
    name = r.text("name", v)
    if not _NAME.match(name):
        raise r.fail("name", f"{name!r}: use letters, digits, _ and - (it names run folders)")
    return {"name": name}


def _text(field: str, default: str | None = None, empty: bool = False):
    return lambda r, v: {field: r.text(field, v, default, empty)}


def _source(r: Reading, source: Any) -> dict[str, Any]:
    if not isinstance(source, dict) or not source:
        raise r.fail("source", "required: files: {train: <file>[, test: <file>]} or hub: <dataset id>")
    kinds = [k for k in SOURCE_FIELDS if k in source]
    if len(kinds) != 1:
        raise r.fail("source", f"give exactly one of files or hub, got {sorted(source)}")
    kind = kinds[0]
    stray = sorted(set(source) - set(SOURCE_FIELDS[kind]))
    if stray:
        raise r.fail(f"source.{stray[0]}", f"unknown field for a {kind} source; allowed: "
                                          f"{', '.join(SOURCE_FIELDS[kind])}")
    field = "source.files" if kind == "files" else "source.splits"
    splits = source.get(kind) if kind == "files" else source.get("splits", {"train": "train", "test": "test"})
    if not isinstance(splits, dict) or "train" not in splits or set(splits) - {"train", "test"}:
        raise r.fail(field, f"a mapping with train and optionally test, got {splits!r}")
    for split, value in splits.items():
        if not isinstance(value, str) or not value:
            raise r.fail(f"{field}.{split}", f"must be a non-empty string, got {value!r}")
    out = {"source_kind": kind, "files": (), "hub_id": "", "hub_config": "default", "revision": REVISION_PARQUET,
           "hub_splits": (), "mirror": ""}
    if kind == "files":
        files = []
        for split, value in splits.items():
            path = (Path(r.path).parent / value).resolve()
            if path.suffix not in FILE_FORMATS:
                raise r.fail(f"source.files.{split}", f"{value!r}: unsupported format; allowed: "
                                                       f"{', '.join(FILE_FORMATS)}")
            if not path.is_file():
                raise r.fail(f"source.files.{split}", f"no such file {path}")
            files.append((split, str(path)))
        return {**out, "files": tuple(files)}
    if not isinstance(source["hub"], str) or source["hub"].count("/") != 1:
        raise r.fail("source.hub", f"a hub dataset id owner/name, got {source['hub']!r}")
    out.update(hub_id=source["hub"], hub_splits=tuple(splits.items()))
    for key, target in (("config", "hub_config"), ("revision", "revision"), ("mirror", "mirror")):
        if key in source:
            if not isinstance(source[key], str) or not source[key]:
                raise r.fail(f"source.{key}", f"must be a non-empty string, got {source[key]!r}")
            out[target] = source[key]
    return out


def _split(r: Reading, split: Any) -> dict[str, Any]:
    if split is None:
        return {"test_fraction": None, "split_seed": 0}
    if not isinstance(split, dict) or set(split) - {"test_fraction", "seed"}:
        raise r.fail("split", f"a mapping with test_fraction (0 < f < 1) and seed (int), got {split!r}")
    fraction, seed = split.get("test_fraction"), split.get("seed", 0)
    if not isinstance(fraction, (int, float)) or isinstance(fraction, bool) or not 0 < fraction < 1:
        raise r.fail("split.test_fraction", f"must be a number in (0, 1), got {fraction!r}")
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise r.fail("split.seed", f"must be an int, got {seed!r}")
    return {"test_fraction": float(fraction), "split_seed": seed}


def _display_names(r: Reading, display: Any) -> dict[str, Any]:
    display = display or {}
    if not isinstance(display, dict) or not all(isinstance(k, (str, int)) and isinstance(v, str) and v
                                                for k, v in display.items()):
        raise r.fail("display_names", f"must map raw label names to non-empty strings, got {display!r}")
    return {"display_names": tuple((str(k), v) for k, v in display.items())}


def _display_style(r: Reading, style: Any) -> dict[str, Any]:
    style = "as_is" if style is None else style
    if style not in DISPLAY_STYLES:
        raise r.fail("display_style", f"got {style!r}; allowed: {', '.join(DISPLAY_STYLES)}")
    return {"display_style": style}


def _allow(r: Reading, allow: Any) -> dict[str, Any]:
    allow = False if allow is None else allow
    if not isinstance(allow, bool):
        raise r.fail("allow_labels_without_examples", f"must be true or false, got {allow!r}")
    return {"allow_labels_without_examples": allow}


def _paper_train_k(r: Reading, steps: Any) -> dict[str, Any]:
    if steps is not None and (not isinstance(steps, int) or isinstance(steps, bool) or steps < 1):
        raise r.fail("paper_train_k", f"must be an integer >= 1, got {steps!r}")
    return {"paper_train_k": steps}


FIELDS: tuple[Field, ...] = (
    Field("name", "required; names run folders and tables: letters, digits, _ and -", "support_tickets", _name),
    Field("input_prefix", "required; the user turn is '<input_prefix> <text>'", '"Ticket:"', _text("input_prefix")),
    Field("prediction_prefix", "required; the assistant turn starts with it, the label follows", '"Team:"',
          _text("prediction_prefix")),
    Field("description", "optional, one line appended to the system prompt", '"Route each ticket to its team."',
          _text("description", "", empty=True)),
    Field("source", "required; files {train, test?} beside the task file (.csv, .jsonl, .parquet), or a hub dataset "
          "{hub: owner/name, config, revision, splits, mirror: <data_dir folder>}",
          "{files: {train: tickets.csv, test: tickets_test.csv}}", _source),
    Field("split", "required when the source has no test split: cut one from train", "{test_fraction: 0.2, seed: 0}",
          _split),
    Field("text_column", "the input column (default text)", "text", _text("text_column", "text")),
    Field("label_column", "string labels, or integer ids with label_names (default label)", "label",
          _text("label_column", "label")),
    Field("label_names", "raw names in id order (integer ids), or to fix the order of string labels", "[a, b, c]",
          lambda r, v: {"label_names": None if v is None else r.names("label_names", v)}),
    Field("display_names", "optional {raw: shown}; other labels follow display_style", "{tech: technical support}",
          _display_names),
    Field("display_style", f"{' | '.join(DISPLAY_STYLES)} (words: lowercase, '_' -> ' ', '?' dropped: the paper's "
          "rule)", "as_is", _display_style),
    Field("drop_labels", "raw names removed, the rest renumbered in order", "[oos]",
          lambda r, v: {"drop_labels": r.names("drop_labels", v or [])}),
    Field("allow_labels_without_examples", "true keeps declared labels with no training rows (the paper's nlu)",
          "false", _allow),
    Field("paper_train_k", "the paper's training steps on this task (its own tasks only)", "10000", _paper_train_k),
)
FIELD_NAMES = tuple(f.name for f in FIELDS)


def parse_spec(doc: Mapping[str, Any], path: str) -> TaskSpec:
    """Check a task file's mapping against :data:`FIELDS` and the rules between fields; the :class:`TaskSpec`."""
    r = Reading(path)
    unknown = sorted(set(doc) - set(FIELD_NAMES))
    if unknown:
        raise r.fail(unknown[0], f"unknown field; allowed: {', '.join(FIELD_NAMES)}")
    spec: dict[str, Any] = {"file": path}
    for field in FIELDS:
        spec.update(field.read(r, doc.get(field.name)))
    given = set(dict(spec["files"] or spec["hub_splits"]))
    if "test" in given and spec["test_fraction"] is not None:
        raise r.fail("split", "the source already has a test split; give one or the other")
    if "test" not in given and spec["test_fraction"] is None:
        raise r.fail("split", "the source has no test split: add split: {test_fraction: 0.2, seed: 0} or a test split")
    if spec["label_names"] is not None:
        for field, raws in (("display_names", [k for k, _ in spec["display_names"]]),
                            ("drop_labels", spec["drop_labels"])):
            stray = [x for x in raws if x not in spec["label_names"]]
            if stray:
                raise r.fail(field, f"{stray[0]!r} is not in label_names")
    return TaskSpec(**spec)


def field_help() -> str:
    """One line per field: ``name: example   # help``."""
    width = max(len(f"{f.name}: {f.example}") for f in FIELDS)
    return "\n".join(f"    {f'{f.name}: {f.example}':<{width}}   # {f.help}" for f in FIELDS)


__doc__ += "\n" + field_help() + "\n"
