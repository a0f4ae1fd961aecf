"""Sweeps: expansion, the three launchers on the real embedded model, sweep-level resume after SIGKILL, failures,
status; aggregation over seeds against hand-computed values; the paper's published numbers."""
from __future__ import annotations

import json
import re
import math
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
from scipy import stats as scipy_stats
import pytest
import yaml

from icrl_lib.analysis import load as results
from icrl_lib.runs.config import load_config
from icrl_lib.errors import UserError
from icrl_lib.sweeps.launchers import run_sweep
from icrl_lib.runs.loop import run_experiment
from icrl_lib.runs.store import read_log, run_name
from icrl_lib.sweeps.spec import load_sweep, status
from test_runner import assert_same_run

ROOT = Path(__file__).resolve().parents[1]
TINY = {"task_name": "trec_coarse", "max_context_examples": 4, "train_k": 4, "test_every": 2, "test_k": 3,
        "debug_k": 0}


def sweep_file(tmp_path: Path, name: str = "s", **spec) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


# --- expansion ---------------------------------------------------------------------------------------------------

def test_two_methods_two_tasks_three_seeds_are_twelve_runs(tmp_path):
    path = sweep_file(tmp_path, base={**TINY, "output_dir": str(tmp_path / "out")},
                      axes={"method": ["explorative", "approximate"], "task_name": ["trec_coarse", "clinic150"],
                            "seeds": [1, 2, [3, 4, 5]]})
    sweep = load_sweep(path)
    assert len(sweep.configs) == 12 and len({run_name(c) for c in sweep.configs}) == 12
    assert {(c.seed, c.training_seed, c.test_seed) for c in sweep.configs} == {(1, 1, 1), (2, 2, 2), (3, 4, 5)}
    assert {c.context_strategy_name for c in sweep.configs} == {"random_unbiased_only_positive",
                                                                 "approximate_only_positive"}
    assert sweep.name == "s" and sweep.launcher == "local" and sweep.workers == 1
    assert status(sweep)["state"].tolist() == ["pending"] * 12


@pytest.mark.parametrize("path", sorted((ROOT / "params" / "sweeps").glob("*.yaml")), ids=lambda p: p.name)
def test_every_sweep_file_expands(path):
    sweep = load_sweep(path)
    assert sweep.configs and all(Path(c.output_dir).is_absolute() for c in sweep.configs)


def test_the_paper_grid_is_one_sweep_of_the_forty_grid_files():
    sweep = load_sweep(ROOT / "params" / "sweeps" / "paper_grid.yaml")
    files = sorted((ROOT / "params" / "grid").rglob("*.yaml"))
    assert len(sweep.configs) == len(files) == 40
    assert sorted(run_name(c) for c in sweep.configs) == sorted(run_name(load_config(f)) for f in files)


@pytest.mark.parametrize("spec, message", [
    ({"axes": {"metod": ["naive"]}}, "axes.metod: not a config field"),
    ({"axes": {"method": ["naiv"]}}, "axes.method: unknown method 'naiv'; allowed: zero_shot"),
    ({"axes": {"seeds": [[1, 2]]}}, "axes.seeds: each value is an int or"),
    ({"axes": {"temperature": []}}, "axes.temperature: expected a non-empty list"),
    ({"launcher": "slrum"}, "launcher: got 'slrum'; allowed: local, slurm, ray"),
    ({"workers": 0}, "workers: must be an integer >= 1"),
    ({"axis": {}}, "unknown key(s) ['axis']"),
    ({"configs": ["nowhere/*.yaml"]}, "configs: no file matches"),
    ({"axes": {"temperature": [-1.0]}}, "temperature: must be >= 0"),
])
def test_a_bad_sweep_file_is_refused_naming_file_and_key(tmp_path, spec, message):
    path = sweep_file(tmp_path, **spec)
    with pytest.raises(UserError) as err:
        load_sweep(path)
    assert str(path) in str(err.value) and message in str(err.value)


def test_cli_sweep_errors_are_one_line(tmp_path):
    path = sweep_file(tmp_path, axes={"method": ["naiv"]})
    proc = subprocess.run([sys.executable, "-m", "icrl_lib", "sweep", str(path)], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "unknown method 'naiv'" in proc.stderr


# --- launchers on the real model ----------------------------------------------------------------------------------

def reference(tmp_path: Path, sweep, lm) -> dict[str, list[dict]]:
    """Each run of ``sweep`` computed in this process, one after another: what every launcher must reproduce."""
    from dataclasses import replace

    return {run_name(c): run_experiment(replace(c, output_dir=str(tmp_path / "reference")), progress=False,
                                        lm=lm).records for c in sweep.configs if c.model_name == lm.name}


@pytest.mark.model
def test_local_launcher_runs_a_sweep_and_one_broken_run_fails_alone(tmp_path, lm):
    """Two workers; the broken run (a model that does not exist) is marked failed with its error, the others finish,
    and the command exits non-zero naming the failure."""
    path = sweep_file(tmp_path, name="local", workers=2, base={**TINY, "output_dir": str(tmp_path / "out")},
                      axes={"model_name": ["smollm2-135m-instruct", "./no/such/model"], "seeds": [1, 2]})
    proc = subprocess.run([sys.executable, "-m", "icrl_lib", "sweep", str(path)], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "4 runs: 2 done, 0 running, 2 failed, 0 pending" in proc.stdout
    lines = [line for line in proc.stdout.splitlines() if re.match(r"\[sweep\] \d/4", line)]
    assert len(lines) == 4 and all(", ETA " in line for line in lines[:3]) and ", ETA" not in lines[3]
    assert "failed" in proc.stderr and "model_name: './no/such/model'" in proc.stderr
    sweep = load_sweep(path)
    table = status(sweep)
    assert table.set_index("state").loc["failed", "error"].str.contains("no local model folder").all()
    expected = reference(tmp_path, sweep, lm)
    for config in sweep.configs:
        if config.model_name == lm.name:
            assert_same_run(read_log(sweep.run_dir(config) / "steps.jsonl"), expected[run_name(config)])
    again = subprocess.run([sys.executable, "-m", "icrl_lib", "sweep", str(path), "--status"], cwd=ROOT,
                           capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and "2 done, 0 running, 2 failed" in again.stdout


@pytest.mark.model
@pytest.mark.parametrize("launcher, options", [("slurm", {"slurm": {"cluster": "local"}}), ("ray", {})],
                         ids=["submitit-local", "ray-local"])
def test_slurm_and_ray_launchers_give_the_same_records(tmp_path, lm, launcher, options):
    path = sweep_file(tmp_path, name=launcher, launcher=launcher, workers=2, **options,
                      base={**TINY, "output_dir": str(tmp_path / "out")}, axes={"method": ["explorative", "naive"]})
    sweep = load_sweep(path)
    lines = []
    table = run_sweep(sweep, report=lines.append)
    assert table["state"].tolist() == ["done", "done"], lines
    expected = reference(tmp_path, sweep, lm)
    for config in sweep.configs:
        assert_same_run(read_log(sweep.run_dir(config) / "steps.jsonl"), expected[run_name(config)])


@pytest.mark.model
def test_a_killed_sweep_restarts_and_finishes_as_an_uninterrupted_one(tmp_path, lm):
    """SIGKILL to the launcher mid-way: its workers die with it (no orphan holds a run), and a restart finishes
    every run with the records of an uninterrupted sweep, never computing a logged step twice."""
    path = sweep_file(tmp_path, name="kill", workers=2,
                      base={**TINY, "train_k": 24, "test_every": 12, "output_dir": str(tmp_path / "out")},
                      axes={"seeds": [1, 2, 3, 4]})
    sweep = load_sweep(path)
    launcher = subprocess.Popen([sys.executable, "-m", "icrl_lib", "sweep", str(path)], cwd=ROOT,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and "done" not in status(sweep)["state"].tolist():
        assert launcher.poll() is None, "the sweep ended before it could be killed"
        time.sleep(0.3)
    launcher.send_signal(signal.SIGKILL)
    launcher.wait()
    time.sleep(2)  # the workers' death signal
    table = status(sweep)
    assert "running" not in table["state"].tolist(), table
    assert 1 <= (table["state"] == "done").sum() < 4
    logged = {run: n for run, n in zip(table["run"], table["steps_done"])}
    finished = run_sweep(load_sweep(path), report=lambda line: None)
    assert finished["state"].tolist() == ["done"] * 4
    expected = reference(tmp_path, sweep, lm)
    for config in sweep.configs:
        records = read_log(sweep.run_dir(config) / "steps.jsonl")
        assert [r["step"] for r in records] == list(range(24))
        assert_same_run(records, expected[run_name(config)])
        assert len(records) >= logged[run_name(config)]


# --- aggregation --------------------------------------------------------------------------------------------------

def synthetic_runs() -> tuple[pd.DataFrame, pd.DataFrame]:
    """Two methods x three seeds on one task; tests at steps 0, 9, 19 with 10 queries each."""
    tests, steps = [], []
    accuracies = {("A", 1): [0.1, 0.5, 0.4], ("A", 2): [0.2, 0.6, 0.8], ("A", 3): [0.0, 0.4, 0.6],
                  ("B", 1): [0.1, 0.2, 0.2], ("B", 2): [0.2, 0.3, 0.3], ("B", 3): [0.0, 0.1, 0.4]}
    regrets = {("A", 1): 12, ("A", 2): 8, ("A", 3): 10, ("B", 1): 15, ("B", 2): 14, ("B", 3): 16}
    for (method, seed), accs in accuracies.items():
        cell = {"run": f"{method}{seed}", "model_name": "m", "task_name": "t", "method": method, "method_key": None,
                "paper_method": None, "paper_setting": None, "train_k": 20, "test_k": 10, "test_every": 10,
                "seed": seed, "training_seed": seed, "test_seed": seed}
        tests += [{**cell, "step": step, "accuracy": acc, "n": 10} for step, acc in zip((0, 9, 19), accs)]
        steps.append({**cell, "step": 19, "regret": float(regrets[method, seed])})
    return pd.DataFrame(tests), pd.DataFrame(steps)


def test_run_metrics_and_their_aggregate_by_hand():
    tests, steps = synthetic_runs()
    per_run = results.run_metrics(tests, steps).set_index("run")
    a2 = per_run.loc["A2"]
    assert (a2.test_acc_step0, a2.test_acc_final, a2.test_acc_peak, a2.peak_step, a2.regret) == (0.2, 0.8, 0.8, 19, 8)
    assert a2.gain == pytest.approx(0.6)  # final minus the run's own step 0
    assert per_run.loc["A1", "peak_step"] == 9 and per_run.loc["A1", "spearman_rho"] == pytest.approx(0.5)
    assert per_run.loc["A2", "spearman_rho"] == pytest.approx(1.0)
    table = results.aggregate(per_run.reset_index()).set_index(["method", "metric"])
    final = table.loc[("A", "test_acc_final")]
    # finals 0.4, 0.8, 0.6 of 10 queries each. Queries: Agresti-Coull centre (6 + 2) / 14, variance c(1-c)/14, 9 df;
    # seeds: variance 0.04 / 3, 2 df; Welch-Satterthwaite df for their sum.
    centre = 8 / 14
    v_query, v_seed = centre * (1 - centre) / 14, 0.04 / 3
    df = (v_query + v_seed) ** 2 / (v_query ** 2 / 9 + v_seed ** 2 / 2)
    half = scipy_stats.t.ppf(0.975, df) * math.sqrt(v_query + v_seed)
    assert (final["mean"], final["n"], final["interval"]) == (pytest.approx(0.6), 3, "Agresti-Coull over queries + seeds")
    assert (final["low"], final["high"]) == (pytest.approx(centre - half), pytest.approx(centre + half))
    regret = table.loc[("B", "regret")]
    assert (regret["mean"], regret["low"], regret["high"]) == (
        pytest.approx(15), pytest.approx(15 - 4.302652729911275 / math.sqrt(3)),
        pytest.approx(15 + 4.302652729911275 / math.sqrt(3)))
    assert table.loc[("A", "test_acc_peak"), "peak_step"] == pytest.approx((9 + 19 + 19) / 3)
    assert table.loc[("A", "regret_per_step"), "mean"] == pytest.approx(10)  # one logged training step per run here


def test_one_seed_gets_an_interval_over_the_test_queries_and_equal_seeds_never_a_zero_width_one():
    tests, steps = synthetic_runs()
    one = tests[tests["run"] == "A1"]
    curve = results.accuracy_curves(one).set_index("step")
    # accuracy 0.5 on 10 queries: centre 7/14, variance 0.25/14, t(0.975, 9) = 2.262157
    assert curve.loc[9, "interval"] == "Agresti-Coull over queries + seeds" and curve.loc[9, "n"] == 1
    half = 2.2621571627409915 * math.sqrt(0.25 / 14)
    assert (curve.loc[9, "low"], curve.loc[9, "high"]) == (pytest.approx(0.5 - half), pytest.approx(0.5 + half))
    per_run = results.run_metrics(one, steps)
    assert math.isnan(results.aggregate(per_run).set_index("metric").loc["regret", "low"])
    equal = pd.concat([one, one.assign(run="A1b", seed=9)])  # two seeds, the same accuracy at every step
    twice = results.accuracy_curves(equal).set_index("step")
    assert twice.loc[0, "n"] == 2 and twice.loc[0, "low"] == 0 and twice.loc[0, "high"] > 0.2  # 0.1 of 10: not [0.1, 0.1]


def test_paired_differences_on_shared_queries_and_seeds():
    """A minus B on the same 10 test queries, seeds 1 and 2: per-query differences (Agresti-Min) plus seed noise."""
    tests, steps = synthetic_runs()
    tests = tests[tests["seed"] < 3]
    per_run = results.run_metrics(tests, steps)
    correct = {("A", 1): [1] * 4 + [0] * 6, ("A", 2): [1] * 8 + [0] * 2, ("B", 1): [0, 1] + [0] * 8,
               ("B", 2): [1] * 3 + [0] * 7}
    predictions = pd.DataFrame([{"run": f"{m}{s}", "step": 19, "example": i, "answer": f"a{i}", "correct": bool(c)}
                                for (m, s), cs in correct.items() for i, c in enumerate(cs)])
    diff = results.paired_differences(per_run, predictions, "A", "B").iloc[0]
    assert diff["effect"] == pytest.approx((0.4 - 0.1 + 0.8 - 0.3) / 2) and diff["n_seeds"] == 2
    assert diff["n_queries"] == 10 and diff["low"] < diff["effect"] < diff["high"] and diff["mde"] > 0
    assert diff["interval"] == "paired over queries and seeds"


def test_the_papers_numbers_ship_with_the_package_and_join_on_a_known_cell():
    paper = results.paper_results()
    assert len(paper) == 1226 and {"family", "model", "task", "method", "setting", "metric", "value"} <= set(paper)
    ours = pd.DataFrame([{"model_name": "meta-llama/Meta-Llama-3.1-8B-Instruct", "task_name": "banking77",
                          "paper_method": "explorative", "paper_setting": "", "metric": "test_acc_final", "mean": 0.61},
                         {"model_name": "smollm2-135m-instruct", "task_name": "banking77",
                          "paper_method": "explorative", "paper_setting": "", "metric": "test_acc_final", "mean": 0.05}])
    joined = results.join_paper(ours)
    assert joined["paper_value"].iloc[0] == pytest.approx(0.660) and joined["paper_section"].iloc[0] == "3.1"
    assert math.isnan(joined["paper_value"].iloc[1])  # the paper never ran this model


def test_where_selects_runs_and_names_a_bad_condition():
    from icrl_lib.sweeps.spec import filtered

    grid = load_sweep(ROOT / "params" / "sweeps" / "paper_grid.yaml")
    phi = filtered(grid, ["model_name=microsoft/Phi-3.5-mini-instruct", "task_name=nlu"])
    assert len(phi.configs) == 4 and {c.task_name for c in phi.configs} == {"nlu"}
    with pytest.raises(UserError, match="--where: expected FIELD=VALUE with a config field, got 'modl=x'"):
        filtered(grid, ["modl=x"])
    with pytest.raises(UserError, match="no run of paper_grid matches task_name=mnist"):
        filtered(grid, ["task_name=mnist"])


def test_token_comparison_per_step_with_a_note_where_no_ratio_exists():
    usage = pd.DataFrame({"task_name": ["t", "t", "u"], "model_name": ["m"] * 3,
                          "method_key": ["explorative", "approximate", "explorative"],
                          "train_computed_tokens": [3000.0, 300.0, 100.0], "steps": [10, 10, 10]})
    table = results.method_token_comparison(usage).set_index("task_name")
    assert (table.loc["t", "explorative"], table.loc["t", "approximate"], table.loc["t", "ratio"]) == (300, 30, 10)
    assert table.loc["t", "note"] == "" and table.loc["u", "note"] == "no approximate run here"
    assert pd.isna(table.loc["u", "ratio"])


def test_paired_differences_pair_each_seed_on_its_own_test_set():
    """Sweeps give every seed its own test set (test_seed = seed): the arms still pair per seed."""
    tests, steps = synthetic_runs()
    tests = tests[tests["seed"] < 3]
    per_run = results.run_metrics(tests, steps)
    correct = {("A", 1): [1] * 4 + [0] * 6, ("A", 2): [1] * 8 + [0] * 2, ("B", 1): [0, 1] + [0] * 8,
               ("B", 2): [1] * 3 + [0] * 7}
    predictions = pd.DataFrame([{"run": f"{m}{s}", "step": 19, "example": i, "answer": f"s{s}q{i}", "correct": bool(c)}
                                for (m, s), cs in correct.items() for i, c in enumerate(cs)])
    diff = results.paired_differences(per_run, predictions, "A", "B").iloc[0]
    assert diff["interval"] == "paired over each seed's queries and seeds" and diff["effect"] == pytest.approx(0.4)
    other = predictions.assign(answer=predictions["answer"] + predictions["run"])  # no query shared: unpaired
    assert results.paired_differences(per_run, other, "A", "B").iloc[0]["interval"].startswith("unpaired")
