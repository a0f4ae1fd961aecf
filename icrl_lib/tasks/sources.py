"""Reading a task's rows: local files (CSV, JSON Lines, parquet), a local mirror of a hub dataset, or the hub.

Every reader returns ``(text, raw label)`` pairs in file order and names the file and line (or row) of a bad value.
Rows are cut into train/test here when the source has no test split (datasets' ``train_test_split``, as the paper
did for nlu). Nothing here knows label ids: that is :mod:`icrl_lib.tasks.task`.
"""
from __future__ import annotations

import json
import math
import os
from functools import lru_cache
from pathlib import Path

from icrl_lib.errors import UserError, os_error
from icrl_lib.paths import resolve_path
from icrl_lib.tasks.schema import REVISION_PARQUET, TaskSpec

SHARED_DATA = Path(__file__).resolve().parents[3] / "shared" / "data"  # ../shared/data beside this checkout
HUB = "hub"  # data_dir / $ICRL_DATA_DIR value that forces loading from the Hugging Face hub
Row = tuple[str, str]  # (text, raw class name): integer ids are mapped through label_names on reading


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path | None:
    """Local data folder: the argument, else ``$ICRL_DATA_DIR``, else ``../shared/data`` beside the checkout when it
    exists; None (load from the hub) when none applies or the chosen value is ``"hub"``."""
    chosen = data_dir or os.environ.get("ICRL_DATA_DIR") or None
    if chosen is None:
        return SHARED_DATA if SHARED_DATA.is_dir() else None
    return None if str(chosen) == HUB else Path(chosen).expanduser()


def _missing(what: str, path: Path) -> FileNotFoundError:
    return FileNotFoundError(
        f"data_dir: expected {what} {path} (a folder laid out like ../shared/data: "
        "<data_dir>/<dataset>/<split>.jsonl); "
        "pass data_dir or set ICRL_DATA_DIR to such a folder, or set it to 'hub' to load from the Hugging Face hub")


def data_source(spec: TaskSpec, data_dir: str | os.PathLike | None = None) -> str:
    """Where :func:`raw_splits` reads ``spec`` from: ``files:<paths>``, ``local:<folder>`` or ``hub:<id>/<config>``
    (recorded per run)."""
    if spec.files:
        return "files:" + ",".join(path for _, path in spec.files)
    folder = resolve_data_dir(data_dir)
    if folder is None or not spec.mirror:
        return f"hub:{spec.hub_id}/{spec.hub_config}@{spec.revision}"
    return f"local:{(folder / spec.mirror).resolve()}"


def _row(spec: TaskSpec, row: object, where: str) -> Row:
    """(text, label) of one raw row; UserError naming ``where`` (file and line or row) and the column."""
    if not isinstance(row, dict):
        raise UserError(f"{where}: expected an object with {spec.text_column!r} and {spec.label_column!r}, "
                        f"got {type(row).__name__}")
    for column, field in ((spec.text_column, "text_column"), (spec.label_column, "label_column")):
        if column not in row:
            raise UserError(f"{where}: no column {column!r} ({field} in {spec.file}); the row has {sorted(row)}")
    text, label = row[spec.text_column], row[spec.label_column]
    if not isinstance(text, str) or not text.strip():
        raise UserError(f"{where}: {spec.text_column!r} must be non-empty text, got {text!r}")
    if isinstance(label, float) and label.is_integer():
        label = int(label)  # parquet/pandas widen integer columns that hold a null elsewhere
    if isinstance(label, bool) or not isinstance(label, (str, int)) or label == "" or (
            isinstance(label, float) and math.isnan(label)):
        raise UserError(f"{where}: {spec.label_column!r} must be a class name or an integer id, got {label!r}")
    names = spec.label_names
    if names is None:
        if isinstance(label, int):
            raise UserError(f"{where}: {spec.label_column!r} holds integer ids ({label}); give their names in "
                            f"label_names in {spec.file}")
        return text, label
    if isinstance(label, str) and label not in names and label.isdigit():
        label = int(label)  # CSV cells are text: "3" is the id 3 when it is not itself a declared name
    if isinstance(label, int):
        if not 0 <= label < len(names):
            raise UserError(f"{where}: {spec.label_column!r} {label} is out of range 0..{len(names) - 1} "
                            f"(label_names in {spec.file})")
        return text, names[label]
    if label not in names:
        raise UserError(f"{where}: {spec.label_column!r} {label!r} is not one of label_names in {spec.file}")
    return text, label


def _read_jsonl(path: Path, spec: TaskSpec) -> list[Row]:
    rows = []
    try:
        with open(path, encoding="utf-8") as fh:
            for number, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as err:
                    raise UserError(f"{path} line {number}: not valid JSON ({err.msg} at column {err.colno})") from None
                rows.append(_row(spec, row, f"{path} line {number}"))
    except UnicodeDecodeError as err:
        raise UserError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    except OSError as err:
        raise os_error("reading", path, err) from None
    return rows


def _read_table(path: Path, spec: TaskSpec) -> list[Row]:
    """CSV (every cell read as text, header line 1) or parquet, through pandas."""
    import pandas as pd

    try:
        if path.suffix == ".csv":
            frame = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8")
        else:
            frame = pd.read_parquet(path)
    except (ValueError, UnicodeDecodeError, pd.errors.ParserError) as err:
        raise UserError(f"{path}: cannot be read as {path.suffix[1:]} ({str(err).splitlines()[0]})") from None
    except OSError as err:
        raise os_error("reading", path, err) from None
    for column, field in ((spec.text_column, "text_column"), (spec.label_column, "label_column")):
        if column not in frame.columns:
            raise UserError(f"{spec.file}: {field}: no column {column!r} in {path}; its columns: {list(frame.columns)}")
    labels = frame[spec.label_column]
    if path.suffix == ".csv" and spec.label_names is None and len(labels) and labels.str.fullmatch(r"\d+").all():
        raise UserError(f"{spec.file}: label_names: required, {path} column {spec.label_column!r} holds integer ids")
    line = 2 if path.suffix == ".csv" else 1  # CSV: data starts on line 2; parquet: row numbers from 1
    what = "line" if path.suffix == ".csv" else "row"
    pairs = frame[[spec.text_column, spec.label_column]].to_dict("records")
    return [_row(spec, r, f"{path} {what} {i + line}") for i, r in enumerate(pairs)]


def _read_file(path: Path, spec: TaskSpec, field: str) -> list[Row]:
    rows = _read_jsonl(path, spec) if path.suffix == ".jsonl" else _read_table(path, spec)
    if not rows:
        raise UserError(f"{spec.file}: {field}: {path} is empty (no rows); a task needs training and test rows")
    return rows


def _read_hub(spec: TaskSpec, split: str) -> list[Row]:
    """One split from the hub: the parquet conversion branch (datasets >= 4 no longer runs loading scripts) or, for
    another ``revision``, ``datasets.load_dataset``. ``huggingface_hub`` reads ``HF_TOKEN`` from the environment."""
    import datasets  # lazy: heavy, and not needed for local files

    if spec.revision == REVISION_PARQUET:
        url = f"hf://datasets/{spec.hub_id}@refs%2Fconvert%2Fparquet/{spec.hub_config}/{split}/*.parquet"
        data = datasets.load_dataset("parquet", data_files={split: url}, split=split)
    else:
        data = datasets.load_dataset(spec.hub_id, spec.hub_config, revision=spec.revision, split=split)
    where = f"hub dataset {spec.hub_id} ({spec.hub_config}) split {split}"
    rows = data.to_list()
    if not rows:
        raise UserError(f"{spec.file}: source.hub: {where} is empty (no rows)")
    return [_row(spec, row, f"{where} row {i}") for i, row in enumerate(rows)]


def raw_splits(spec: TaskSpec, data_dir: str | os.PathLike | None = None
               ) -> tuple[tuple[Row, ...], tuple[Row, ...], str]:
    """(train, test) rows of a task's source, each checked, cut by ``split`` when there is no test split, and where
    they were read (:func:`data_source`)."""
    folder = resolve_data_dir(data_dir)
    stamps = tuple(Path(p).stat().st_mtime_ns for _, p in spec.files)  # an edited file is read again
    return *_raw_splits(spec, str(folder) if folder and spec.mirror else None, stamps), data_source(spec, data_dir)


@lru_cache(maxsize=8)
def _raw_splits(spec: TaskSpec, mirror_root: str | None, _stamps: tuple[int, ...]):
    if spec.files:
        paths = dict(spec.files)

        def read(split: str) -> list[Row]:
            return _read_file(Path(paths[split]), spec, f"source.files.{split}")
    elif mirror_root is not None:
        root = Path(mirror_root)
        if not root.is_dir():
            raise _missing("the data folder", root)
        if not (root / spec.mirror).is_dir():
            raise _missing(f"the dataset folder {spec.mirror!r} at", root / spec.mirror)

        def read(split: str) -> list[Row]:
            path = root / spec.mirror / f"{dict(spec.hub_splits)[split]}.jsonl"
            if not path.is_file():
                raise _missing("the JSON Lines file", path)
            return _read_file(path, spec, "source.mirror")
    else:
        def read(split: str) -> list[Row]:
            return _read_hub(spec, dict(spec.hub_splits)[split])

    train = read("train")
    if spec.test_fraction is None:
        return tuple(train), tuple(read("test"))
    import datasets  # the paper: Dataset.train_test_split(test_size=0.2, seed=0) of nlu's single hub split

    # The split depends only on the number of rows and the seed: split row numbers, then take those rows.
    numbered = datasets.Dataset.from_dict({"i": list(range(len(train)))}).train_test_split(
        test_size=spec.test_fraction, seed=spec.split_seed)
    return tuple(train[i] for i in numbered["train"]["i"]), tuple(train[i] for i in numbered["test"]["i"])


def data_dir_param(data_dir: str | None) -> str | None:
    """A notebook's ``data_dir`` parameter: a folder resolved against the checkout, or ``"hub"`` / None as given."""
    return str(resolve_path(data_dir)) if data_dir and data_dir != HUB else data_dir
