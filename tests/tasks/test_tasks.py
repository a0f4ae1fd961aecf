"""Tasks on the real offline data: counts, labels, display names, sampling, variants, errors, hub path.

Expected values come from the data README's numbers or from a few independent lines reading the JSON Lines files.
"""
from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import pytest

from icrl_lib.tasks import sources as task_sources
from icrl_lib.tasks.sources import resolve_data_dir
from icrl_lib.tasks.task import Example, load_task, parse_task_name
from tests.helpers import ROOT

# task -> (dataset folder, label field, input prefix, prediction prefix)
LAYOUT = {
    "banking77": ("banking77", "label", "Query:", "Intent:"),
    "clinic150": ("clinc_oos_plus", "intent", "Query:", "Intent:"),
    "trec_coarse": ("trec", "coarse_label", "Question:", "Type:"),
    "trec_fine": ("trec", "fine_label", "Question:", "Type:"),
    "nlu": ("nlu_evaluation_data", "label", "Utterance:", "Intent:"),
}
# task -> (train rows, test rows, labels exposed, labels present in train)
COUNTS = {
    "banking77": (10003, 3080, 77, 77),
    "clinic150": (15250 - 250, 5500 - 1000, 150, 150),
    "trec_coarse": (5452, 500, 6, 6),
    "trec_fine": (5452, 500, 50, 50),
    "nlu": (8828, 2208, 68, 64),  # 11,036 rows: test = ceil(0.2 * 11036) = 2208
}


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def _labels_json(data_dir: Path, folder: str, field: str) -> dict:
    return json.loads((data_dir / folder / "labels.json").read_text(encoding="utf-8"))[field]


def _expected_pairs(data_dir: Path, name: str) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(text, display label) per row of train and test, computed straight from the files."""
    folder, field, _, _ = LAYOUT[name]
    table = _labels_json(data_dir, folder, field)
    if name == "nlu":
        import datasets

        parts = datasets.Dataset.from_list(_jsonl(data_dir / folder / "train.jsonl")).train_test_split(
            test_size=0.2, seed=0)
        splits = [parts["train"].to_list(), parts["test"].to_list()]
    else:
        splits = [_jsonl(data_dir / folder / f"{s}.jsonl") for s in ("train", "test")]
    return tuple([(r["text"], table["display"][r[field]]) for r in rows if table["names"][r[field]] != "oos"]
                 for rows in splits)


def _pairs(task, rows) -> list[tuple[str, str]]:
    return [(ex.text, task.answer(ex)) for ex in rows]


@pytest.mark.data
@pytest.mark.parametrize("name", list(LAYOUT))
def test_rows_labels_and_formatting(data_dir, name):
    task = load_task(name, data_dir)
    n_train, n_test, n_labels, n_present = COUNTS[name]
    assert (len(task.train), len(task.test), len(task.labels)) == (n_train, n_test, n_labels)
    assert len({ex.label for ex in task.train}) == n_present
    assert all(0 <= ex.label < n_labels for ex in task.train + task.test)
    train, test = _expected_pairs(data_dir, name)
    assert _pairs(task, task.train) == train and _pairs(task, task.test) == test
    _, _, input_prefix, prediction_prefix = LAYOUT[name]
    assert task.format_input(task.test[0]) == f"{input_prefix} {task.test[0].text}"
    assert (task.prediction_prefix, task.description, task.name) == (prediction_prefix, "", name)


@pytest.mark.data
@pytest.mark.parametrize("name", list(LAYOUT))
def test_display_names_match_labels_json(data_dir, name):
    folder, field, _, _ = LAYOUT[name]
    table = _labels_json(data_dir, folder, field)
    assert load_task(name, data_dir).spec.label_names == tuple(table["names"])  # the task file's, in id order
    expected = tuple(d for n, d in zip(table["names"], table["display"]) if n != "oos")
    assert load_task(name, data_dir).labels == expected


@pytest.mark.data
def test_spot_display_names(data_dir):
    assert "oos" not in load_task("clinic150", data_dir).labels
    fine = load_task("trec_fine", data_dir).labels
    assert "numeric distance" in fine and "abbreviation abbreviation" in fine
    assert load_task("trec_coarse", data_dir).labels[0] == "abbreviation"
    banking = load_task("banking77", data_dir).labels
    assert "refund not showing up" in banking and "reverted card payment" in banking
    assert all(label == label.lower() and "_" not in label and "?" not in label for label in banking)


@pytest.mark.data
@pytest.mark.parametrize("k,seed", [(None, 100), (-1, 3), (50, 100), (0, 1)])
def test_sampling_equals_global_random_shuffle(data_dir, k, seed):
    task = load_task("trec_coarse", data_dir)
    random.seed(seed)
    train = list(task.train)
    random.shuffle(train)
    random.seed(seed)
    test = list(task.test)
    random.shuffle(test)
    n = None if k == -1 else k
    assert task.sample_train(k, seed) == ((), tuple(train[:n]))
    assert task.sample_test(k, seed) == tuple(test[:n])


@pytest.mark.data
def test_sampling_leaves_global_rng_alone(data_dir):
    task = load_task("trec_coarse", data_dir)
    random.seed(7)
    expected = random.random()
    random.seed(7)
    task.sample_train(10, 1, exemplars_per_label=2)
    task.sample_test(10, 1)
    assert random.random() == expected


@pytest.mark.data
@pytest.mark.parametrize("per_label", [1, 3])
def test_exemplars(data_dir, per_label):
    task = load_task("trec_fine", data_dir)
    exemplars, stream = task.sample_train(None, 5, exemplars_per_label=per_label)
    random.seed(5)
    walk = list(task.train)
    random.shuffle(walk)
    seen, expected, pool = Counter(), [], []
    for ex in walk:
        (expected if seen[ex.label] < per_label else pool).append(ex)
        seen[ex.label] += 1
    random.seed(5)
    random.shuffle(pool)
    assert exemplars == tuple(expected) and stream == tuple(pool)
    counts = Counter(ex.label for ex in exemplars)
    assert max(counts.values()) <= per_label and set(counts) == {ex.label for ex in task.train}
    assert {id(ex) for ex in exemplars}.isdisjoint(id(ex) for ex in stream)  # by identity: texts may repeat
    assert len(exemplars) + len(stream) == len(task.train)
    assert task.sample_train(20, 5, exemplars_per_label=per_label) == (exemplars, stream[:20])


@pytest.mark.data
def test_top_k_against_counter(data_dir):
    rows = _jsonl(data_dir / "banking77" / "train.jsonl")
    test_rows = _jsonl(data_dir / "banking77" / "test.jsonl")
    display = _labels_json(data_dir, "banking77", "label")["display"]
    top = sorted(label for label, _ in Counter(r["label"] for r in rows).most_common(10))
    task = load_task("banking77_top10", data_dir)
    assert task.labels == tuple(display[i] for i in top)
    assert _pairs(task, task.train) == [(r["text"], display[r["label"]]) for r in rows if r["label"] in top]
    assert _pairs(task, task.test) == [(r["text"], display[r["label"]]) for r in test_rows if r["label"] in top]
    assert {ex.label for ex in task.train} == {ex.label for ex in task.test} == set(range(10))


@pytest.mark.data
def test_unsemantic_and_combined(data_dir):
    plain = load_task("trec_coarse", data_dir)
    uns = load_task("trec_coarse_unsemantic", data_dir)
    assert uns.labels == ("label_1000", "label_1001", "label_1002", "label_1003", "label_1004", "label_1005")
    assert (uns.train, uns.test) == (plain.train, plain.test)
    top = load_task("banking77_top10", data_dir)
    both = load_task("banking77_top10_unsemantic", data_dir)
    assert both.labels == tuple(f"label_{1000 + i}" for i in range(10)) and both.train == top.train
    assert load_task("banking77_unsemantic_top10", data_dir).labels == both.labels
    parsed = parse_task_name("banking77_unsemantic_top10")
    assert (parsed.base, parsed.top, parsed.unsemantic, parsed.label) == ("banking77", 10, True,
                                                                          "banking77_unsemantic_top10")
    fine = parse_task_name("trec_fine")
    assert (fine.base, fine.top, fine.unsemantic, fine.spec.name) == ("trec_fine", None, False, "trec_fine")


@pytest.mark.data
def test_task_values_are_independent(data_dir):
    plain_before = load_task("banking77", data_dir)
    load_task("banking77_unsemantic", data_dir)
    top = load_task("banking77_top10", data_dir)
    plain = load_task("banking77", data_dir)
    assert plain.labels[0] == "activate my card" and len(plain.labels) == 77
    assert plain == plain_before
    assert len(top.labels) == 10 and all(top.labels)
    assert all(any(ex.label == i for ex in top.train) for i in range(10))
    with pytest.raises(AttributeError):
        plain.labels = ()  # frozen value


@pytest.mark.parametrize("bad", ["bankin77", "banking77_top0", "banking77_top999", "", "Banking77",
                                 "banking77_top10_top5", "nlu_top69"])
@pytest.mark.data
def test_bad_names(data_dir, bad):
    with pytest.raises(ValueError, match="task_name") as err:
        load_task(bad, data_dir)
    assert all(name in str(err.value) for name in ("banking77", "clinic150", "nlu", "trec_coarse", "trec_fine"))


@pytest.mark.data
def test_top_k_beyond_labels_present(data_dir):
    with pytest.raises(ValueError, match="task_name.*only 64"):
        load_task("nlu_top65", data_dir)


@pytest.mark.data
def test_bad_sampling_arguments(data_dir):
    task = load_task("trec_coarse", data_dir)
    with pytest.raises(ValueError, match="k:"):
        task.sample_test(-2, 0)
    with pytest.raises(ValueError, match="exemplars_per_label"):
        task.sample_train(5, 0, exemplars_per_label=-1)


def test_missing_data(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match="ICRL_DATA_DIR") as err:
        load_task("banking77", missing)
    assert str(missing) in str(err.value)
    with pytest.raises(FileNotFoundError) as err:
        load_task("banking77", tmp_path)
    assert str(tmp_path / "banking77") in str(err.value)
    (tmp_path / "banking77").mkdir()
    (tmp_path / "banking77" / "train.jsonl").write_text('{"text": "hi", "label": 0}\n', encoding="utf-8")
    with pytest.raises(FileNotFoundError) as err:
        load_task("banking77", tmp_path)
    assert str(tmp_path / "banking77" / "test.jsonl") in str(err.value)


@pytest.mark.data
def test_data_dir_from_environment(data_dir, monkeypatch, tmp_path):
    monkeypatch.setenv("ICRL_DATA_DIR", str(data_dir))
    assert resolve_data_dir(None) == data_dir
    assert resolve_data_dir(tmp_path) == tmp_path  # the argument wins
    assert load_task("trec_coarse").train == load_task("trec_coarse", data_dir).train
    monkeypatch.setenv("ICRL_DATA_DIR", "hub")
    assert resolve_data_dir(None) is None and resolve_data_dir("hub") is None
    monkeypatch.delenv("ICRL_DATA_DIR")
    beside = ROOT.parent / "shared" / "data"  # ../shared/data beside the checkout
    assert resolve_data_dir(None) == (beside if beside.is_dir() else None)


@pytest.mark.data
def test_hub_path_gives_identical_tasks(data_dir, monkeypatch):
    """The hub is unreachable here: serve the local rows through a fake load_dataset and compare both paths."""
    import datasets

    specs = [load_task(name, data_dir).spec for name in LAYOUT]
    folders = {spec.hub_id: spec.mirror for spec in specs}
    calls = []

    def fake_load_dataset(kind, data_files, split):
        (url,) = data_files.values()
        calls.append(url)
        hub_id = url.removeprefix("hf://datasets/").split("@")[0]
        assert kind == "parquet" and url.endswith(f"@refs%2Fconvert%2Fparquet/{url.split('/')[-3]}/{split}/*.parquet")
        return datasets.Dataset.from_list(_jsonl(data_dir / folders[hub_id] / f"{split}.jsonl"))

    monkeypatch.setenv("ICRL_DATA_DIR", "hub")
    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    task_sources._raw_splits.cache_clear()
    try:
        for name in ("banking77", "clinic150_top5_unsemantic", "trec_fine", "nlu"):
            assert load_task(name) == load_task(name, data_dir)
    finally:
        task_sources._raw_splits.cache_clear()  # drop the fake hub rows
    assert "hf://datasets/clinc/clinc_oos@refs%2Fconvert%2Fparquet/plus/test/*.parquet" in calls
    assert ("hf://datasets/xingkunliuxtracta/nlu_evaluation_data@refs%2Fconvert%2Fparquet/default/train/*.parquet"
            in calls)


def test_example_is_immutable():
    ex = Example("hi", 0)
    with pytest.raises(AttributeError):
        ex.label = 1
