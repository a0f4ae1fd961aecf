"""Task files: the five paper tasks as shipped YAML equal the code they replaced, a user's CSV / JSON Lines / parquet
task, variants on any task, and every bad task file refused with the field and the file named, before any model.

tests/data/paper_tasks_reference.json was captured from the pre-task-file code (commit 0fb3502, icrl_lib/tasks.py
with hard-coded specs) by building each task and the prompt of a 2-episode history, exactly as
``_task_summary`` does here.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml

from icrl_lib.engine.models import encode, find_eot_id
from icrl_lib.errors import UserError
from icrl_lib.paper.prompts import Episode, build_messages, render_prompt, supports_system_role, system_prompt
from icrl_lib.runs.config import ExperimentConfig
from icrl_lib.runs.identity import run_name
from icrl_lib.runs.loop import run_experiment
from icrl_lib.runs.plan import prepare
from icrl_lib.tasks.task import load_task

ROOT = Path(__file__).resolve().parents[2]
TICKETS = ROOT / "params" / "tasks" / "support_tickets"
REFERENCE = json.loads((ROOT / "tests" / "data" / "paper_tasks_reference.json").read_text(encoding="utf-8"))


@pytest.fixture
def tokenizer(tiny):
    """The embedded model's tokenizer (the tiny model shares it; the paper's prompts do not depend on weights)."""
    return tiny.tokenizer


def _task_summary(task, tokenizer) -> dict:
    def digest(rows) -> str:
        return hashlib.sha256(json.dumps([[e.text, e.label] for e in rows]).encode()).hexdigest()

    _, stream = task.sample_train(2, seed=1, exemplars_per_label=0)
    episodes = [Episode(task.format_input(e), task.answer(e), task.labels[(e.label + i) % len(task.labels)], i % 2)
                for i, e in enumerate(stream)]
    query = task.format_input(task.sample_test(1, seed=2)[0])
    messages = build_messages(system_prompt(True, task.description), episodes, query, icrl=True,
                              prediction_prefix=task.prediction_prefix, system_role=supports_system_role(tokenizer))
    return {"n_train": len(task.train), "n_test": len(task.test), "train_sha256": digest(task.train),
            "test_sha256": digest(task.test), "first_train": [task.train[0].text, task.train[0].label],
            "labels": list(task.labels), "prediction_prefix": task.prediction_prefix, "description": task.description,
            "format_input": task.format_input(task.test[0]),
            "prompt_2_episodes": render_prompt(tokenizer, messages, task.prediction_prefix)}


@pytest.mark.data
@pytest.mark.tiny
@pytest.mark.parametrize("name", list(REFERENCE))
def test_paper_task_files_equal_the_code_they_replaced(data_dir, tokenizer, name):
    task = load_task(name, data_dir)
    assert Path(task.spec.file).parent == ROOT / "icrl_lib" / "tasks" / "registry"
    assert _task_summary(task, tokenizer) == REFERENCE[name]


def _write_task(folder: Path, **fields) -> Path:
    """A copy of the example task in ``folder`` (its CSV beside it), with ``fields`` replaced (None: removed)."""
    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / "tickets.csv").exists():
        shutil.copy(TICKETS / "tickets.csv", folder / "tickets.csv")
    doc = yaml.safe_load((TICKETS / "task.yaml").read_text(encoding="utf-8"))
    for key, value in fields.items():
        doc.pop(key) if value is None else doc.__setitem__(key, value)
    path = folder / "task.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    return path


@pytest.mark.data
def test_the_example_task(data_dir):
    task = load_task("params/tasks/support_tickets/task.yaml")
    rows = pd.read_csv(TICKETS / "tickets.csv")
    assert (len(task.train), len(task.test)) == (225, 75)
    assert task.labels == ("account access", "billing", "product question", "returns", "shipping", "technical support")
    assert sorted((e.text, task.answer(e)) for e in task.train + task.test) == sorted(
        zip(rows["text"], rows["team"].str.replace("_", " ")))
    assert task.format_input(task.test[0]).startswith("Ticket: ") and task.prediction_prefix == "Team:"
    assert system_prompt(True, task.description).endswith("\nRoute each customer support ticket to the team that "
                                                          "handles it.")
    top = load_task("params/tasks/support_tickets/task.yaml_top3_unsemantic")
    assert top.name == "support_tickets_top3_unsemantic" and top.labels == ("label_1000", "label_1001", "label_1002")
    config = ExperimentConfig(task_name="params/tasks/support_tickets/task.yaml_top3", output_dir="outputs")
    assert run_name(config).startswith("support_tickets_top3__smollm2-135m-instruct__")


def test_csv_jsonl_and_parquet_give_the_same_task(tmp_path):
    rows = pd.read_csv(TICKETS / "tickets.csv")
    tasks = []
    for suffix, write in ((".csv", lambda f, p: f.to_csv(p, index=False)),
                          (".jsonl", lambda f, p: f.to_json(p, orient="records", lines=True)),
                          (".parquet", lambda f, p: f.to_parquet(p))):
        folder = tmp_path / suffix[1:]
        folder.mkdir()
        write(rows[:200], folder / f"train{suffix}")
        write(rows[200:], folder / f"test{suffix}")
        tasks.append(load_task(str(_write_task(folder, source={"files": {"train": f"train{suffix}",
                                                                         "test": f"test{suffix}"}}, split=None))))
    assert len({(t.name, t.labels, t.train, t.test) for t in tasks}) == 1  # specs differ only in file paths
    assert (len(tasks[0].train), len(tasks[0].test)) == (200, 100)
    assert [e.text for e in tasks[0].test] == rows["text"][200:].tolist()  # file order kept


def test_integer_ids_label_names_display_names_and_drop_labels(tmp_path):
    rows = pd.read_csv(TICKETS / "tickets.csv")
    teams = sorted(rows["team"].unique())
    rows["team"] = rows["team"].map(teams.index)  # integer ids, as many hub datasets store labels
    rows.to_parquet(tmp_path / "tickets.parquet")
    path = _write_task(tmp_path, source={"files": {"train": "tickets.parquet"}}, label_names=teams,
                       display_names={"billing": "payments"}, drop_labels=["returns"], display_style="as_is")
    task = load_task(str(path))
    assert task.labels == ("account_access", "payments", "product_question", "shipping", "technical_support")
    assert len(task.train) + len(task.test) == 250  # the 50 returns tickets are gone
    assert all(0 <= e.label < 5 for e in task.train + task.test)


BAD = {  # name: (fields to change, part of the message besides the task file)
    "missing file": ({"source": {"files": {"train": "nowhere.csv"}}}, "source.files.train"),
    "missing text column": ({"text_column": "body"}, "text_column: no column 'body'"),
    "missing label column": ({"label_column": "queue"}, "label_column: no column 'queue'"),
    "empty split": ({"source": {"files": {"train": "tickets.csv", "test": "empty.csv"}}, "split": None},
                    "source.files.test"),
    "label without training rows": ({"label_names": ["account_access", "billing", "product_question", "returns",
                                                     "shipping", "technical_support", "legal"]},
                                    "label_names: label 'legal' has no examples"),
    "one label": ({"drop_labels": ["account_access", "billing", "product_question", "returns", "shipping"]},
                  "labels: 1 label(s)"),
    "prediction prefix in a label": ({"display_names": {"billing": "Team: billing"}},
                                     "display_names: label 'Team: billing' contains the prediction_prefix"),
    "newline in a label": ({"display_names": {"billing": "bill\ning"}}, "display_names: label 'bill\\ning'"),
    "two labels shown alike": ({"display_names": {"billing": "shipping"}}, "display_names: two labels"),
    "integer ids without names": ({"label_column": "id"}, "label_names"),
    "no test split": ({"split": None}, "split: the source has no test split"),
    "unknown field": ({"labels": ["a"]}, "labels: unknown field"),
    "bad display style": ({"display_style": "title"}, "display_style: got 'title'; allowed: as_is, words"),
    "bad split": ({"split": {"test_fraction": 1.5}}, "split.test_fraction"),
    "bad name": ({"name": "my task"}, "name: 'my task'"),
    "unsupported format": ({"source": {"files": {"train": "tickets.xlsx"}}}, "source.files.train: 'tickets.xlsx'"),
    "hub and files": ({"source": {"files": {"train": "tickets.csv"}, "hub": "a/b"}}, "source: give exactly one"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_task_files_name_the_field_and_the_file_before_any_model(tmp_path, case):
    changes, message = BAD[case]
    (tmp_path / "empty.csv").write_text("text,team\n", encoding="utf-8")
    rows = pd.read_csv(TICKETS / "tickets.csv")
    rows.assign(id=range(len(rows))).to_csv(tmp_path / "tickets.csv", index=False)
    path = _write_task(tmp_path, **changes)
    with pytest.raises(UserError) as err:  # the conftest guard fails the test if a model were loaded
        run_experiment(ExperimentConfig(task_name=str(path), train_k=4, test_k=2, output_dir=str(tmp_path / "out")))
    text = str(err.value)
    assert str(path) in text and message in text, text
    assert "\n" not in text.replace("\\n", "")


@pytest.mark.tiny
def test_labels_that_tokenize_alike_are_refused_with_the_tokenizer_alone(tmp_path, tokenizer):
    """A real tokenizer that lowercases (as BERT-style ones do): 'Billing' and 'billing' become one sequence. The
    model folder holds a config and that tokenizer but no weights, so reaching the model would fail otherwise."""
    model = tmp_path / "lowercasing-model"
    tokenizer.save_pretrained(model)
    spec = json.loads((model / "tokenizer.json").read_text(encoding="utf-8"))
    spec["normalizer"] = {"type": "Lowercase"}
    (model / "tokenizer.json").write_text(json.dumps(spec), encoding="utf-8")
    (model / "config.json").write_text(json.dumps({"model_type": "llama"}), encoding="utf-8")
    path = _write_task(tmp_path / "task", display_names={"billing": "Billing", "shipping": "billing"})
    config = ExperimentConfig(model_name=str(model), task_name=str(path), train_k=4, test_k=2,
                              output_dir=str(tmp_path / "out"))
    with pytest.raises(UserError, match=r"labels 'Billing' and 'billing' tokenize identically for model_name") as err:
        prepare(config)
    assert str(path) in str(err.value) and not any((tmp_path / "out").iterdir())  # no run folder
    task = load_task(str(_write_task(tmp_path / "fine")))
    task.label_trie(lambda t: encode(tokenizer, t), find_eot_id(tokenizer),
                    "smollm2-135m-instruct")  # distinct labels pass


@pytest.mark.tiny
def test_a_csv_task_runs_icrl_end_to_end(tmp_path, tiny):
    lm = tiny
    config = ExperimentConfig(model_name=lm.name, task_name="params/tasks/support_tickets/task.yaml",
                              context_strategy_name="approximate_only_positive", max_contexts=4,
                              approximate_context_sampling_method="uniform",
                              context_p_keep=0.5, train_k=6,
                              test_every=3, test_k=4, output_dir=str(tmp_path))
    result = run_experiment(config, progress=False, lm=lm)
    assert result.run_dir.name.startswith("support_tickets__") and "__approximate_only_positive" in result.run_dir.name
    assert result.steps["step"].tolist() == list(range(6))
    labels = set(load_task(config.task_name).labels)
    assert set(result.steps["prediction"]) <= labels
    assert result.tests["accuracy"].between(0, 1).all() and len(result.tests) == 3


def test_family_params_take_a_task_file():
    from icrl_lib.families.spec import configs
    from icrl_lib.paper.experiments import family

    pairs = configs(family("abstract_labels"), {"tasks": ["params/tasks/support_tickets/task.yaml"], "seeds": [1]})
    assert {c.task_name for _, c in pairs} == {"params/tasks/support_tickets/task.yaml_unsemantic"}
    assert all(run_name(c).startswith("support_tickets_unsemantic__") for _, c in pairs)


def test_a_hub_task_file_reads_the_revision_and_splits_it_names(tmp_path, monkeypatch):
    """The hub is unreachable here: a stand-in load_dataset serves the example CSV and records what was asked."""
    import datasets

    from icrl_lib.tasks import sources as task_sources

    rows = pd.read_csv(TICKETS / "tickets.csv")
    calls = []

    def fake_load_dataset(path, name=None, revision=None, split=None):
        calls.append((path, name, revision, split))
        return datasets.Dataset.from_pandas(rows[:200] if split == "train" else rows[200:], preserve_index=False)

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    path = _write_task(tmp_path, source={"hub": "acme/tickets", "config": "en", "revision": "v1.0",
                                         "splits": {"train": "train", "test": "validation"}}, split=None)
    task_sources._raw_splits.cache_clear()
    try:
        task = load_task(str(path))
    finally:
        task_sources._raw_splits.cache_clear()
    assert calls == [("acme/tickets", "en", "v1.0", "train"), ("acme/tickets", "en", "v1.0", "validation")]
    assert (len(task.train), len(task.test)) == (200, 100) and task.source == "hub:acme/tickets/en@v1.0"


def test_the_schema_is_declared_once_and_the_help_and_readme_follow_it():
    """FIELDS is the one declaration: the module's help lists each field with its help line, the README's example
    uses only declared fields and parses, and every TaskSpec attribute comes from some field's check."""
    import dataclasses

    import icrl_lib.tasks.schema as schema

    for field in schema.FIELDS:
        assert f"{field.name}: {field.example}" in schema.__doc__ and field.help in schema.__doc__
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    example = readme.split("## Your own task", 1)[1].split("```yaml\n", 1)[1].split("```", 1)[0]
    doc = yaml.safe_load(example)
    assert set(doc) <= set(schema.FIELD_NAMES)
    task_dir = Path(__file__).resolve().parents[2] / "params" / "tasks" / "support_tickets"
    spec = schema.parse_spec(doc, str(task_dir / "task.yaml"))
    assert {f.name for f in dataclasses.fields(schema.TaskSpec)} == {"file", *_produced(spec)}
    assert spec.display("technical_support") == "technical support"


def _produced(spec) -> set[str]:
    """The attributes FIELDS' checks produce for a file (every one, whatever the values)."""
    import icrl_lib.tasks.schema as schema

    reading = schema.Reading(spec.file)
    doc = {"name": "x", "input_prefix": "a:", "prediction_prefix": "b:", "source": {"hub": "o/n"}}
    return {key for field in schema.FIELDS for key in field.read(reading, doc.get(field.name))}
