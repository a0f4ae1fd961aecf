"""The paper's five classification tasks: data (local JSON Lines folder or the Hugging Face hub), labels, variants.

A task is an immutable value. Variants are part of the name: ``<task>_top<k>`` keeps the k most frequent training
labels (renumbered in id order) and ``<task>_unsemantic`` replaces label names by ``label_<1000 + id>``; they
combine (``banking77_top10_unsemantic``). Building a variant never changes another task value (the paper's code
mutated a class-level label table, and its ``_top<k>`` path compared names with ids and emptied the label set).
"""
from __future__ import annotations

import json
import os
import random
import re
from collections import Counter
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from types import MappingProxyType
from typing import Mapping

from .errors import UserError, os_error

TASK_NAMES: tuple[str, ...] = ("banking77", "clinic150", "trec_coarse", "trec_fine", "nlu")


@dataclass(frozen=True)
class Example:
    """One row: the raw text and the label id (into ``Task.labels``)."""

    text: str
    label: int


@dataclass(frozen=True)
class TaskSpec:
    """Declarative registry entry: where a task's data lives and how the paper words it."""

    name: str
    hub_id: str
    hub_config: str
    local_folder: str  # folder name under a local data_dir (layout of ../shared/data)
    label_field: str
    input_prefix: str
    prediction_prefix: str
    description: str = ""
    test_split: str | None = "test"  # None: split the train split 80/20 as the paper did (nlu)
    drop_labels: tuple[str, ...] = ()  # raw class names removed, the rest renumbered in order


TASKS: Mapping[str, TaskSpec] = MappingProxyType({
    "banking77": TaskSpec("banking77", "PolyAI/banking77", "default", "banking77", "label", "Query:", "Intent:"),
    "clinic150": TaskSpec("clinic150", "clinc/clinc_oos", "plus", "clinc_oos_plus", "intent", "Query:", "Intent:",
                          drop_labels=("oos",)),
    "trec_coarse": TaskSpec("trec_coarse", "CogComp/trec", "default", "trec", "coarse_label", "Question:", "Type:"),
    "trec_fine": TaskSpec("trec_fine", "CogComp/trec", "default", "trec", "fine_label", "Question:", "Type:"),
    "nlu": TaskSpec("nlu", "xingkunliuxtracta/nlu_evaluation_data", "default", "nlu_evaluation_data", "label",
                    "Utterance:", "Intent:", test_split=None),
})

# TREC class names are abbreviations (``NUM:dist``); the paper shows the model words (``numeric distance``). Its
# id_to_label tables expand each ``:``-separated part on its own, so the table is keyed by part; parts not listed
# (``animal``, ``city``, ...) are already words.
_TREC_WORDS = MappingProxyType({
    "ABBR": "abbreviation", "ENTY": "entity", "DESC": "description", "HUM": "human", "LOC": "location",
    "NUM": "numeric", "abb": "abbreviation", "exp": "expansion", "cremat": "creation", "dismed": "disease",
    "instru": "instrument", "lang": "language", "techmeth": "technique", "termeq": "term", "veh": "vehicle",
    "def": "definition", "desc": "description", "dist": "distance", "gr": "group", "ind": "individual",
    "mount": "mountain", "ord": "order", "perc": "percent", "temp": "temperature", "volsize": "size",
})
_VARIANT = re.compile(r"^(?P<base>[a-z0-9_]+?)(?P<rest>(?:_top\d+|_unsemantic)*)$")
_Row = tuple[tuple[str, object], ...]  # a raw row frozen as (field, value) pairs, so cached splits stay immutable


def _allowed() -> str:
    return "allowed: " + ", ".join(sorted(TASK_NAMES)) + " (optionally with _top<k> and/or _unsemantic)"


@lru_cache(maxsize=1)
def raw_label_names() -> Mapping[str, Mapping[str, tuple[str, ...]]]:
    """The hub's raw class names per dataset folder and label field (shipped in ``icrl_lib/label_names.json``)."""
    table = json.loads(Path(__file__).with_name("label_names.json").read_text(encoding="utf-8"))
    return MappingProxyType({d: MappingProxyType({f: tuple(n) for f, n in fields.items()}) for d, fields in table.items()})


def display_name(raw: str, spec: TaskSpec) -> str:
    """The label text shown to the model: lowercase words (the dataset's ``?`` dropped), TREC abbreviations expanded."""
    if spec.local_folder == "trec":
        return " ".join(_TREC_WORDS.get(part, part) for part in raw.split(":"))
    return raw.lower().replace("_", " ").replace("?", "")


def base_labels(spec: TaskSpec) -> tuple[str, ...]:
    """Display names of a base task in id order (``drop_labels`` removed); needs no data, only the package table."""
    names = raw_label_names()[spec.local_folder][spec.label_field]
    return tuple(display_name(n, spec) for n in names if n not in spec.drop_labels)


def parse_task_name(name: str) -> tuple[str, int | None, bool]:
    """``'banking77_top10_unsemantic'`` -> ``('banking77', 10, True)``; ValueError naming ``task_name`` otherwise.

    Checks k of ``_top<k>`` against the task's label count without loading any data.
    """
    match = _VARIANT.match(name) if isinstance(name, str) else None
    if match is None or match["base"] not in TASKS:
        raise ValueError(f"task_name: unknown task {name!r}; {_allowed()}")
    tops = re.findall(r"_top(\d+)", match["rest"])
    unsemantic = match["rest"].count("_unsemantic")
    if len(tops) > 1 or unsemantic > 1:
        raise ValueError(f"task_name: {name!r} repeats a variant; {_allowed()}")
    top = int(tops[0]) if tops else None
    n_labels = len(base_labels(TASKS[match["base"]]))
    if top is not None and not 1 <= top <= n_labels:
        raise ValueError(f"task_name: {name!r} asks for the top {top} labels but {match['base']} has {n_labels}; "
                         f"k must be in 1..{n_labels}; {_allowed()}")
    return match["base"], top, bool(unsemantic)


@dataclass(frozen=True)
class Task:
    """A task value: labels (display names, id order) and its full train/test splits, after variants."""

    name: str
    spec: TaskSpec
    labels: tuple[str, ...]
    train: tuple[Example, ...]
    test: tuple[Example, ...]
    source: str = field(default="", compare=False)  # where the rows came from (see data_source); not the content

    @property
    def prediction_prefix(self) -> str:
        """What the assistant turn starts with (``Intent:`` / ``Type:``)."""
        return self.spec.prediction_prefix

    @property
    def description(self) -> str:
        """Task description appended to the system prompt (empty for all five tasks, as in the paper)."""
        return self.spec.description

    def format_input(self, ex: Example) -> str:
        """The user turn for an example, e.g. ``Query: how do I top up?``."""
        return f"{self.spec.input_prefix} {ex.text}"

    def answer(self, ex: Example) -> str:
        """Gold label name of an example."""
        return self.labels[ex.label]

    def sample_train(self, k: int | None, seed: int, exemplars_per_label: int = 0
                     ) -> tuple[tuple[Example, ...], tuple[Example, ...]]:
        """(exemplars, training stream): ``exemplars_per_label`` gold rows per label, then k shuffled others.

        Exemplars are the first rows of each label in the seed-shuffled training split; the stream is the rest,
        shuffled again with the same seed (as the paper's exemplar path), first k rows (k None or -1: all).
        """
        if not isinstance(exemplars_per_label, int) or exemplars_per_label < 0:
            raise ValueError(f"exemplars_per_label: must be an int >= 0, got {exemplars_per_label!r}")
        if exemplars_per_label == 0:
            return (), _shuffled(self.train, seed, k)
        taken: Counter[int] = Counter()
        exemplars, pool = [], []
        for ex in _shuffled(self.train, seed, None):
            if taken[ex.label] < exemplars_per_label:
                taken[ex.label] += 1
                exemplars.append(ex)
            else:
                pool.append(ex)
        return tuple(exemplars), _shuffled(tuple(pool), seed, k)

    def sample_test(self, k: int | None, seed: int) -> tuple[Example, ...]:
        """First k rows of the test split shuffled with ``seed`` (k None or -1: all)."""
        return _shuffled(self.test, seed, k)


def _shuffled(rows: tuple[Example, ...], seed: int, k: int | None) -> tuple[Example, ...]:
    if k is not None and (not isinstance(k, int) or k < -1):
        raise ValueError(f"k: number of rows must be None, -1 (all) or an int >= 0, got {k!r}")
    # random.Random(seed).shuffle == random.seed(seed); random.shuffle (the paper), without touching the global RNG.
    rows = list(rows)
    random.Random(seed).shuffle(rows)
    return tuple(rows if k is None or k == -1 else rows[:k])


SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"  # ../shared/data beside this checkout
HUB = "hub"  # data_dir / $ICRL_DATA_DIR value that forces loading from the Hugging Face hub


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path | None:
    """Local data folder: the argument, else ``$ICRL_DATA_DIR``, else ``../shared/data`` beside the checkout when it
    exists; None (load from the hub) when none applies or the chosen value is ``"hub"``."""
    chosen = data_dir or os.environ.get("ICRL_DATA_DIR") or None
    if chosen is None:
        return SHARED_DATA if SHARED_DATA.is_dir() else None
    return None if str(chosen) == HUB else Path(chosen).expanduser()


def _missing(what: str, path: Path) -> FileNotFoundError:
    return FileNotFoundError(
        f"data_dir: expected {what} {path} (a folder laid out like ../shared/data: <data_dir>/<dataset>/<split>.jsonl); "
        "pass data_dir or set ICRL_DATA_DIR to such a folder, or set it to 'hub' to load from the Hugging Face hub")


def _check_row(row: object, spec: TaskSpec, where: str) -> dict:
    """A raw row as a dict with a text and a valid label id; UserError naming ``where`` (file and line) otherwise."""
    names = raw_label_names()[spec.local_folder][spec.label_field]
    if not isinstance(row, dict):
        raise UserError(f"{where}: expected a JSON object with 'text' and {spec.label_field!r}, got {type(row).__name__}")
    for key, kind in (("text", str), (spec.label_field, int)):
        if key not in row:
            raise UserError(f"{where}: row has no {key!r} field (task {spec.name} needs 'text' and "
                            f"{spec.label_field!r}; the row has {sorted(row)})")
        if not isinstance(row[key], kind) or isinstance(row[key], bool):
            raise UserError(f"{where}: {key!r} must be a {kind.__name__}, got {row[key]!r}")
    if not 0 <= row[spec.label_field] < len(names):
        raise UserError(f"{where}: {spec.label_field!r} {row[spec.label_field]} is out of range 0..{len(names) - 1}")
    return row


def _read_jsonl(path: Path, spec: TaskSpec) -> list[dict]:
    if not path.is_file():
        raise _missing("the JSON Lines file", path)
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
                rows.append(_check_row(row, spec, f"{path} line {number}"))
    except UnicodeDecodeError as err:
        raise UserError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    except OSError as err:
        raise os_error("reading", path, err) from None
    if not rows:
        raise UserError(f"{path}: the split is empty (no rows); a task needs training and test rows")
    return rows


def _read_hub(spec: TaskSpec, split: str) -> list[dict]:
    """One split from the hub's parquet-converted branch (datasets >= 4 no longer runs loading scripts).

    ``huggingface_hub`` reads ``HF_TOKEN`` from the environment; nothing here handles credentials.
    """
    import datasets  # lazy: heavy, and not needed for local folders of non-nlu tasks

    url = f"hf://datasets/{spec.hub_id}@refs%2Fconvert%2Fparquet/{spec.hub_config}/{split}/*.parquet"
    rows = datasets.load_dataset("parquet", data_files={split: url}, split=split).to_list()
    where = f"hub dataset {spec.hub_id} ({spec.hub_config}) split {split}"
    if not rows:
        raise UserError(f"{where}: the split is empty (no rows)")
    return [_check_row(row, spec, f"{where} row {i}") for i, row in enumerate(rows)]


def data_source(spec: TaskSpec, data_dir: str | os.PathLike | None = None) -> str:
    """Where :func:`load_task` reads ``spec`` from: ``local:<folder>`` or ``hub:<id>/<config>`` (recorded per run)."""
    folder = resolve_data_dir(data_dir)
    if folder is None:
        return f"hub:{spec.hub_id}/{spec.hub_config}@refs/convert/parquet"
    return f"local:{(folder / spec.local_folder).resolve()}"


@lru_cache(maxsize=8)
def _raw_splits(data_dir: str | None, spec: TaskSpec) -> tuple[tuple[_Row, ...], tuple[_Row, ...]]:
    """(train, test) raw rows of one dataset, local or hub, each checked; everything after reading is shared."""
    if data_dir is not None:
        root = Path(data_dir)
        if not root.is_dir():
            raise _missing("the data folder", root)
        if not (root / spec.local_folder).is_dir():
            raise _missing(f"the dataset folder {spec.local_folder!r} at", root / spec.local_folder)

        def read(split: str) -> list[dict]:
            return _read_jsonl(root / spec.local_folder / f"{split}.jsonl", spec)
    else:
        def read(split: str) -> list[dict]:
            return _read_hub(spec, split)

    train = read("train")
    if spec.test_split is None:  # the paper: Dataset.train_test_split(test_size=0.2, seed=0) of the single hub split
        import datasets

        parts = datasets.Dataset.from_list(train).train_test_split(test_size=0.2, seed=0)
        train, test = parts["train"].to_list(), parts["test"].to_list()
    else:
        test = read(spec.test_split)
    return tuple(tuple(r.items()) for r in train), tuple(tuple(r.items()) for r in test)


def _examples(rows: tuple[_Row, ...], spec: TaskSpec) -> tuple[Example, ...]:
    """Rows (checked by :func:`_check_row`) -> Examples with ids renumbered after ``drop_labels`` (clinic150: ``oos``)."""
    names = raw_label_names()[spec.local_folder][spec.label_field]
    new_id, kept = {}, 0
    for old, raw in enumerate(names):
        if raw not in spec.drop_labels:
            new_id[old], kept = kept, kept + 1
    out = []
    for row in rows:
        fields = dict(row)
        label = fields[spec.label_field]
        if label in new_id:
            out.append(Example(fields["text"], new_id[label]))
    return tuple(out)


def load_task(name: str, data_dir: str | os.PathLike | None = None) -> Task:
    """Build the task ``name`` (variants included) from a local folder or the hub (see :func:`resolve_data_dir`).

    Raises ValueError for a bad name and FileNotFoundError when a local folder or file is missing.
    """
    base, top, unsemantic = parse_task_name(name)
    spec = TASKS[base]
    folder = resolve_data_dir(data_dir)
    train, test = _raw_splits(str(folder) if folder else None, spec)
    task = Task(name, spec, base_labels(spec), _examples(train, spec), _examples(test, spec),
                data_source(spec, data_dir))
    if top is not None:
        task = _top_k(task, top)
    if unsemantic:
        task = replace(task, labels=tuple(f"label_{1000 + i}" for i in range(len(task.labels))))
    for split in ("train", "test"):
        if not getattr(task, split):
            raise UserError(f"task_name: {name!r} has no {split} rows left in {task.source}")
    return task


def _top_k(task: Task, k: int) -> Task:
    """Keep the k most frequent training labels (Counter.most_common order for ties), renumbered in id order."""
    counts = Counter(ex.label for ex in task.train)
    if len(counts) < k:  # nlu: 68 names but only 64 occur in the offline copy
        raise ValueError(f"task_name: {task.name!r} asks for the top {k} labels but only {len(counts)} occur in the "
                         f"training split of {task.spec.name}; {_allowed()}")
    kept = sorted(label for label, _ in counts.most_common(k))
    new_id = {old: new for new, old in enumerate(kept)}

    def keep(rows: tuple[Example, ...]) -> tuple[Example, ...]:
        return tuple(Example(ex.text, new_id[ex.label]) for ex in rows if ex.label in new_id)

    return replace(task, labels=tuple(task.labels[i] for i in kept), train=keep(task.train), test=keep(task.test))
