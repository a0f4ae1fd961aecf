"""One name per run, wherever it is shown: the same run folder reads alike in ``results.ipynb``'s table, the family
notebooks' tables (metrics, paper vs ours, tokens) and the verdict tables, and names stay apart for runs that differ
in what they are (seeds never: they are aggregated, with n).

The run folders are written here through the run log's own writer (``StepRecord.to_json``) for the configs the
family notebooks expand to; the tables are made by the library calls those notebooks make.
"""
from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest
import yaml

from icrl_lib.analysis import aggregate, load, verdict_tables
from icrl_lib.families import comparison, report
from icrl_lib.paper import experiments
from icrl_lib.paper.methods import name_run
from icrl_lib.runs.record import ContextRecord, StepRecord, TestRecord, TrainRecord
from icrl_lib.runs.store import CONFIG_FILE, LOG_FILE, run_dir

SEEDS = [100, 101, 102]
SIZES = {"tasks": ["trec_coarse"], "seeds": SEEDS, "train_k": 7, "test_every": 3, "test_k": 12,
         "max_context_examples": 4}
FAMILIES = {  # family -> its parameters beyond SIZES (small knobs; the context windows need no cap on episodes)
    "main": {}, "reward_ablations": {}, "abstract_labels": {},
    "exploration": {"knobs": {"p_keep": [0.1, 1.0], "temperature": [1.0, 2.0]}},
    "context_window": {"knobs": {"window": [400, 800]}, "max_context_examples": None},
    "approximate": {"knobs": {"K": [1, 8]}},
}
LABELS = [f"label {i}" for i in range(6)]


def _write_run(config, rng: np.random.Generator) -> None:
    """A finished run folder of ``config``: its config and a step log of random predictions."""
    folder = run_dir(config)
    if folder.exists():  # the same run in two families (e.g. explorative ICRL in main and the reward ablations)
        return
    folder.mkdir(parents=True)
    (folder / CONFIG_FILE).write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
    answers = tuple(LABELS[i % len(LABELS)] for i in range(config.test_k))
    last = 0 if config.zero_shot else config.train_k - 1
    lines = []
    for step in range(last + 1):
        test = None
        if step % config.test_every == 0 or step == last:
            predictions = tuple(a if rng.random() < 0.5 else LABELS[0] for a in answers)
            test = TestRecord(predictions, answers, float(np.mean([p == a for p, a in zip(predictions, answers)])))
        train = None
        if not config.zero_shot:
            answer, prediction = LABELS[step % len(LABELS)], str(rng.choice(LABELS))
            reward = None if not config.icrl else int(prediction == answer)
            train = TrainRecord(step, f"query {step}", answer, prediction if config.icrl else None, reward, reward)
        record = StepRecord(step, ContextRecord(size=min(step, 4)), train, test, {"prompt": 100, "computed": 20},
                            {"prompt": 80, "computed": 10}, {"tokens": 0, "evictions": 0}, 0.01)
        lines.append(json.dumps(record.to_json()) + "\n")
    (folder / LOG_FILE).write_text("".join(lines))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The run folders of every family in FAMILIES under one outputs folder, and each family's sweep and arms."""
    root = tmp_path_factory.mktemp("outputs")
    rng = np.random.default_rng(0)
    sweeps = {}
    for name, extra in FAMILIES.items():
        params = {**SIZES, **extra, "output_dir": str(root), "run": False}
        sweep, arms = report.family_sweep(experiments.family(name), params)
        for config in sweep.configs:
            _write_run(config, rng)
        sweeps[name] = (params, sweep, arms)
    return root, sweeps


def _results_names(root) -> tuple[dict[str, str], pd.DataFrame]:
    """results.ipynb's calls: run folder -> name, and the metrics table it displays."""
    tests, steps, _ = load.read(root)
    per_run = aggregate.run_metrics(tests, steps)
    return dict(zip(per_run["run"], per_run["method"])), aggregate.metrics_table(aggregate.aggregate(per_run))


def _side(text: str) -> str:
    """A verdict side without its measure and size suffix: 'naive ICRL [top_share]' -> 'naive ICRL'."""
    return re.sub(r"( \[[a-z_0-9]+\])+$", "", text)


def test_every_run_folder_has_one_name_in_every_table(runs):
    root, sweeps = runs
    names, results_table = _results_names(root)
    assert set(results_table.index.get_level_values("method")) == set(names.values())
    for name, (params, sweep, arms) in sweeps.items():
        fam = experiments.family(name)
        tables = report.collect(sweep, arms)
        family_names = dict(zip(tables.per_run["run"], tables.per_run["method"]))
        assert family_names == {run: names[run] for run in arms}, name  # every folder: the same name as results
        assert dict(zip(tables.tests["run"], tables.tests["method"])).items() <= family_names.items()
        shown = set(family_names.values())
        metrics = aggregate.metrics_table(tables.aggregated, report.arm_order(arms, tables))
        assert set(metrics.index.get_level_values("method")) == shown, name
        assert report.arm_order(arms, tables) == list(dict.fromkeys(tables.name(a.label) for a in arms.values()))
        assert set(report.arm_order(arms, tables)) == shown
        assert set(report.references(arms, tables)) <= shown
        assert set(report.arm_names(sweep, arms).values()) == shown
        paper_vs_ours = comparison.paper_vs_ours(fam, tables, arms)
        assert set(paper_vs_ours["arm"]) <= shown and len(paper_vs_ours), name
        assert set(report.token_table(tables)["method"]) == shown
        assert set(tables.curves["method"]) == shown
        verdicts = report.verdict_table(fam, tables, arms, params)
        measured = verdicts[verdicts["verdict"] != "not measured"]
        sides = {_side(s) for s in (*measured["left"], *measured["right"])}
        assert sides and sides <= shown, (name, sides - shown)
        # a side that has not run here (a K the profile left out) is named as its runs would be, never by a label
        labels = {a.label for a in fam.arms()} - {name_run({**a.fields, "task_name": "trec_coarse" + fam.task_suffix})
                                                  for a in fam.arms()}
        assert not {_side(s) for s in (*verdicts["left"], *verdicts["right"])} & labels
        report.export(fam, {}, tables, {"verdicts": verdicts}, report.export_folder(fam, params))
    # the verdict tables as results.ipynb gathers them from the families' exports
    gathered = verdict_tables.gather(root)
    assert set(gathered["family"]) == set(FAMILIES)
    measured = gathered[gathered["verdict"] != "not measured"]
    assert {_side(s) for s in (*measured["left"], *measured["right"])} <= set(names.values())


def test_the_issues_runs_are_named_by_what_they_are(runs):
    """The inverted-reward run was 'explorative: inverted' in its family notebook and 'random_unbiased (p_keep=0.1,
    T=1, flip_p=1, max_examples=4)' in results.ipynb; main's ICL both 'ICL' and 'ICL (max_examples=4)'."""
    root, sweeps = runs
    names, _ = _results_names(root)
    by_label = {}
    for name, (_, _, arms) in sweeps.items():
        for folder, arm in arms.items():
            by_label.setdefault((name, arm.label), set()).add(names[folder])
    assert by_label[("reward_ablations", "explorative: inverted")] == {
        "explorative ICRL, all episodes, inverted rewards"}
    assert by_label[("reward_ablations", "naive: inverted")] == {"naive ICRL, inverted rewards, T=2"}
    assert by_label[("main", "ICL")] == by_label[("abstract_labels", "ICL")] == {"ICL"}
    assert by_label[("main", "explorative ICRL")] == by_label[("reward_ablations", "explorative: only_positive")] \
        == by_label[("approximate", "explorative ICRL (K=∞)")] == {"explorative ICRL"}
    assert by_label[("context_window", "window 400, random_biased_start")] == {
        "explorative ICRL, random_biased_start downsampling, 400-token window"}
    assert by_label[("exploration", "naive+ ICRL, T=1")] == {"naive+ ICRL, T=1"}


def test_names_are_distinct_for_distinct_runs_and_never_carry_a_seed(runs):
    root, sweeps = runs
    names, results_table = _results_names(root)
    seeds = {s for seed in SEEDS for s in (f"seed{seed}", str(seed))}
    assert not any(part in seeds for name in names.values() for part in re.split(r"[ ,=]+", name))
    assert (results_table["n"] == len(SEEDS)).all()  # every name aggregates its seeds, and says how many
    assert results_table.index.is_unique
    for name, (_, sweep, arms) in sweeps.items():
        # runs that differ beyond their seeds (another arm of the family) never share a name in its tables
        what = {}
        for config in sweep.configs:
            kind = json.dumps({k: v for k, v in config.identity().items()
                               if k not in ("seed", "training_seed", "test_seed")}, sort_keys=True, default=str)
            what.setdefault(names[run_dir(config).name], set()).add(kind)
        assert all(len(kinds) == 1 for kinds in what.values()), (name, what)
        tables = report.collect(sweep, arms)
        assert len(set(tables.names.values())) == len(tables.names), name  # arm label <-> name, one to one


def test_a_name_with_runs_of_several_sizes_keeps_its_rows_apart(tmp_path):
    """A cap on a context's episodes is a size, not part of the name: results' table shows it beside the name where
    one name has runs of several caps, so no two rows read alike."""
    rng = np.random.default_rng(1)
    fam = experiments.family("main")
    for cap in (4, 8):
        params = {**SIZES, "max_context_examples": cap, "arms": ["ICL", "naive ICRL"], "output_dir": str(tmp_path)}
        sweep, _ = report.family_sweep(fam, params)
        for config in sweep.configs:
            _write_run(config, rng)
    names, table = _results_names(tmp_path)
    assert set(names.values()) == {"ICL", "naive ICRL"}
    assert table.index.is_unique and len(table) == 4
    assert "max_context_examples" in table.index.names
    assert {(m, c) for m, c in zip(table.index.get_level_values("method"),
                                   table.index.get_level_values("max_context_examples"))} == {
        ("ICL", 4), ("ICL", 8), ("naive ICRL", 4), ("naive ICRL", 8)}


def test_every_family_arm_at_the_papers_values_is_named_from_its_config():
    """A family's arms at the paper's own knob values: each named once and apart from the others."""
    for fam in experiments.FAMILIES.values():
        names = [name_run({**dict(a.fields), "task_name": "clinic150" + fam.task_suffix}) for a in fam.arms()]
        assert len(set(names)) == len(names), (fam.name, names)
