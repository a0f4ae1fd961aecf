"""Tasks as immutable values: labels, train/test examples and prompt wording, built from a task file.

``task_name`` is a registered name (a task file shipped in ``icrl_lib/tasks/registry/``: the paper's ``banking77``,
``clinic150``, ``trec_coarse``, ``trec_fine``, ``nlu``) or a path to a task file (:mod:`icrl_lib.tasks.files`).
Variants are suffixes of either: ``<task>_top<k>`` keeps the k most frequent training labels (renumbered in id
order) and ``<task>_unsemantic`` replaces label names by ``label_<1000 + id>``; they combine
(``banking77_top10_unsemantic``, ``tickets.yaml_top5``). Building a variant never changes another task value (the
paper's code mutated a class-level label table, and its ``_top<k>`` path compared names with ids and emptied the
label set).
"""
from __future__ import annotations

import os
import random
import re
from collections import Counter
from dataclasses import dataclass, field, replace

from icrl_lib.errors import UserError
from icrl_lib.tasks.files import PACKAGE_TASKS, is_task_path, read_spec, registered, task_file
from icrl_lib.tasks.schema import TaskSpec
from icrl_lib.tasks.sources import raw_splits
from icrl_lib.tasks.trie import LabelTrie

_VARIANT = re.compile(r"^(?P<base>.+?)(?P<rest>(?:_top\d+|_unsemantic)*)$", re.DOTALL)


@dataclass(frozen=True)
class Example:
    """One row: the raw text and the label id (into ``Task.labels``)."""

    text: str
    label: int


def _allowed() -> str:
    return ("allowed: " + ", ".join(registered()) + " (optionally with _top<k> and/or _unsemantic), or a path to a "
            "task YAML file")


def base_labels(spec: TaskSpec) -> tuple[str, ...] | None:
    """Display names of a task in id order (``drop_labels`` removed) when its file declares ``label_names``; None
    when the labels are only known from the data."""
    if spec.label_names is None:
        return None
    return tuple(spec.display(n) for n in spec.label_names if n not in spec.drop_labels)


@dataclass(frozen=True)
class TaskName:
    """A ``task_name``, parsed once (the config carries it): its base task, variants, task file and the name run
    folders show."""

    name: str  # as given
    base: str  # without the variant suffixes
    top: int | None  # k of _top<k>
    unsemantic: bool
    spec: TaskSpec  # the base task's file, read
    label: str  # as run folders show it (see task_label)


def parse_task_name(name: str) -> TaskName:
    """``'banking77_top10_unsemantic'`` -> base ``banking77``, top 10, unsemantic; UserError naming ``task_name``
    otherwise. Reads and checks the task file (no data): k of ``_top<k>`` is checked against declared labels."""
    match = _VARIANT.match(name) if isinstance(name, str) and name else None
    if match is None:
        raise UserError(f"task_name: unknown task {name!r}; {_allowed()}")
    tops = re.findall(r"_top(\d+)", match["rest"])
    unsemantic = match["rest"].count("_unsemantic")
    if len(tops) > 1 or unsemantic > 1:
        raise UserError(f"task_name: {name!r} repeats a variant; {_allowed()}")
    top = int(tops[0]) if tops else None
    path = task_file(match["base"])
    spec = read_spec(path)
    labels = base_labels(spec)
    if top is not None and (top < 1 or (labels is not None and top > len(labels))):
        n = len(labels) if labels is not None else "its"
        raise UserError(f"task_name: {name!r} asks for the top {top} labels but {match['base']} has {n}; "
                        f"k must be in 1..{n}; {_allowed()}")
    # task_file gives exactly this path for a registered name, and a resolved file for a path (task_label's rule)
    registered_name = path == PACKAGE_TASKS / f"{match['base']}.yaml"
    return TaskName(name, match["base"], top, bool(unsemantic), spec,
                    name if registered_name else spec.name + match["rest"])


def task_label(name: str) -> str:
    """``task_name`` as run folders show it: a registered name as is; a task file's ``name`` plus its variants
    (``params/tasks/tickets.yaml_top5`` -> ``support_tickets_top5``). Never fails (a moved task file: the name made
    safe for a folder), for listing runs; a run's own is its config's ``task.label``."""
    match = _VARIANT.match(name)
    if match is None or not is_task_path(match["base"]):
        return name
    try:
        return read_spec(task_file(match["base"])).name + match["rest"]
    except UserError:  # a moved file: still a valid folder name
        return re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-.")


@dataclass(frozen=True)
class Task:
    """A task value: labels (display names, id order) and its full train/test splits, after variants."""

    name: str
    spec: TaskSpec
    labels: tuple[str, ...]
    train: tuple[Example, ...]
    test: tuple[Example, ...]
    source: str = field(default="", compare=False)  # where the rows came from (sources.data_source); not the content

    @property
    def prediction_prefix(self) -> str:
        """What the assistant turn starts with (``Intent:`` / ``Type:``)."""
        return self.spec.prediction_prefix

    @property
    def description(self) -> str:
        """Task description appended to the system prompt (empty for all five paper tasks, as in the paper)."""
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

    def label_trie(self, encode, eot_id: int, model_name: str) -> LabelTrie:
        """The label trie under the model's tokenizer. Labels whose token sequences (`` <label>`` + end-of-turn) are
        identical cannot be told apart by constrained decoding: UserError naming both and the task file, before the
        model loads (it needs only the tokenizer)."""
        try:
            return LabelTrie.build(self.labels, encode, eot_id)
        except ValueError as err:
            raise UserError(f"{self.spec.file}: display_names: {err} for model_name {model_name!r}; give one of them "
                            "another display name") from None


def _shuffled(rows: tuple[Example, ...], seed: int, k: int | None) -> tuple[Example, ...]:
    if k is not None and (not isinstance(k, int) or k < -1):
        raise ValueError(f"k: number of rows must be None, -1 (all) or an int >= 0, got {k!r}")
    # random.Random(seed).shuffle == random.seed(seed); random.shuffle (the paper), without touching the global RNG.
    rows = list(rows)
    random.Random(seed).shuffle(rows)
    return tuple(rows if k is None or k == -1 else rows[:k])


def load_task(name: str | TaskName, data_dir: str | os.PathLike | None = None) -> Task:
    """Build the task ``name`` (variants included; parsed already, or parsed here) from its task file's source (see
    :func:`resolve_data_dir` for the paper tasks' local mirror). UserError (a ValueError) naming the field and file
    for anything wrong; FileNotFoundError when a local data folder or file is missing."""
    parsed = name if isinstance(name, TaskName) else parse_task_name(name)
    spec = parsed.spec
    train, test, source = raw_splits(spec, data_dir)
    raws = spec.label_names if spec.label_names is not None else tuple(sorted({r for _, r in train + test}))
    kept = [r for r in raws if r not in spec.drop_labels]
    new_id = {raw: i for i, raw in enumerate(kept)}
    task = Task(parsed.label, spec,
                tuple(spec.display(r) for r in kept),
                tuple(Example(t, new_id[r]) for t, r in train if r in new_id),
                tuple(Example(t, new_id[r]) for t, r in test if r in new_id), source)
    check_labels(task, kept)
    if parsed.top is not None:
        task = _top_k(task, parsed.top)
    if parsed.unsemantic:
        task = replace(task, labels=tuple(f"label_{1000 + i}" for i in range(len(task.labels))))
    for split in ("train", "test"):
        if not getattr(task, split):
            raise UserError(f"task_name: {parsed.name!r} has no {split} rows left in {task.source}")
    return task


def check_labels(task: Task, raws: list[str]) -> None:
    """The label set a prompt can carry: at least 2 labels, distinct, one line each, without the prediction prefix,
    each with training rows (unless the file allows otherwise). UserError naming the field and the file."""
    spec = task.spec
    if len(task.labels) < 2:
        raise UserError(f"{spec.file}: labels: {len(task.labels)} label(s) {list(task.labels)} after drop_labels; "
                        "a task needs at least 2")
    shown = dict(spec.display_names)
    for raw, label in zip(raws, task.labels):
        where = "display_names" if raw in shown else "label_names" if spec.label_names else "label_column"
        if "\n" in label or "\r" in label:
            raise UserError(f"{spec.file}: {where}: label {label!r} contains a line break")
        if spec.prediction_prefix.strip() in label:
            raise UserError(f"{spec.file}: {where}: label {label!r} contains the prediction_prefix "
                            f"{spec.prediction_prefix!r}")
    repeated = [label for label, n in Counter(task.labels).items() if n > 1]
    if repeated:
        raise UserError(f"{spec.file}: display_names: two labels are shown as {repeated[0]!r}")
    if not spec.allow_labels_without_examples:
        present = {ex.label for ex in task.train}
        empty = [raws[i] for i in range(len(raws)) if i not in present]
        if empty:
            where = "label_names" if spec.label_names else "label_column"
            raise UserError(f"{spec.file}: {where}: label {empty[0]!r} has no examples in the training split "
                            f"({len(empty)} such); add them to drop_labels, or set allow_labels_without_examples")


def _top_k(task: Task, k: int) -> Task:
    """Keep the k most frequent training labels (Counter.most_common order for ties), renumbered in id order."""
    counts = Counter(ex.label for ex in task.train)
    if len(counts) < k:  # nlu: 68 names but only 64 occur in the offline copy
        raise UserError(f"task_name: {task.name!r} asks for the top {k} labels but only {len(counts)} occur in the "
                        f"training split of {task.spec.name}; {_allowed()}")
    kept = sorted(label for label, _ in counts.most_common(k))
    new_id = {old: new for new, old in enumerate(kept)}

    def keep(rows: tuple[Example, ...]) -> tuple[Example, ...]:
        return tuple(Example(ex.text, new_id[ex.label]) for ex in rows if ex.label in new_id)

    return replace(task, labels=tuple(task.labels[i] for i in kept), train=keep(task.train), test=keep(task.test))
