"""Sweeps: expansion, the three launchers on the tiny model, sweep-level resume after SIGKILL, failures, status and
the ETA."""
from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from icrl_lib.errors import UserError
from icrl_lib.runs.config import load_config
from icrl_lib.runs.identity import run_dir, run_name
from icrl_lib.runs.loop import run_experiment
from icrl_lib.runs.store import read_records
from icrl_lib.sweeps.launchers import run_sweep
from icrl_lib.sweeps.sweep import load_sweep, status
from tests.helpers import ROOT, TICKETS, assert_same_run

TINY = {"task_name": TICKETS, "max_context_examples": 4, "train_k": 4, "test_every": 2, "test_k": 3, "debug_k": 0}


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
    ({"threads": 1.5}, "threads: must be an integer >= 1 (torch threads per local worker), got 1.5"),
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


# --- launchers on the tiny model ----------------------------------------------------------------------------------

def reference(tmp_path: Path, sweep, lm) -> dict[str, list]:
    """Each run of ``sweep`` computed in this process, one after another: what every launcher must reproduce."""
    from dataclasses import replace

    return {run_name(c): run_experiment(replace(c, output_dir=str(tmp_path / "reference")), progress=False,
                                        lm=lm).records for c in sweep.configs if c.model_name == lm.name}


@pytest.mark.tiny
def test_local_launcher_runs_a_sweep_and_one_broken_run_fails_alone(tmp_path, tiny):
    """Two workers; the broken run (a model that does not exist) is marked failed with its error, the others finish,
    and the command exits non-zero naming the failure."""
    path = sweep_file(tmp_path, name="local", workers=2, base={**TINY, "output_dir": str(tmp_path / "out")},
                      axes={"model_name": [tiny.name, "./no/such/model"], "seeds": [1, 2]})
    proc = subprocess.run([sys.executable, "-m", "icrl_lib", "sweep", str(path)], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "4 runs: 2 done, 0 running, 2 failed, 0 pending" in proc.stdout
    lines = [line for line in proc.stdout.splitlines() if re.match(r"\[sweep\] \d/4", line)]
    assert len(lines) == 4 and ", ETA" not in lines[3]  # done: no ETA; before, one once a training step is timed
    assert any(", ETA " in line for line in lines[1:3])
    assert "failed" in proc.stderr and "model_name: './no/such/model'" in proc.stderr
    sweep = load_sweep(path)
    table = status(sweep)
    assert table.set_index("state").loc["failed", "error"].str.contains("no local model folder").all()
    expected = reference(tmp_path, sweep, tiny)
    for config in sweep.configs:
        if config.model_name == tiny.name:
            assert_same_run(read_records(run_dir(config)), expected[run_name(config)])
    again = subprocess.run([sys.executable, "-m", "icrl_lib", "sweep", str(path), "--status"], cwd=ROOT,
                           capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and "2 done, 0 running, 2 failed" in again.stdout


@pytest.mark.tiny
@pytest.mark.parametrize("launcher, options", [("slurm", {"slurm": {"cluster": "local"}}), ("ray", {})],
                         ids=["submitit-local", "ray-local"])
@pytest.mark.tiny
def test_slurm_and_ray_launchers_give_the_same_records(tmp_path, tiny, launcher, options):
    path = sweep_file(tmp_path, name=launcher, launcher=launcher, workers=2, **options,
                      base={**TINY, "model_name": tiny.name, "output_dir": str(tmp_path / "out")},
                      axes={"method": ["explorative", "naive"]})
    sweep = load_sweep(path)
    lines = []
    table = run_sweep(sweep, report=lines.append)
    assert table["state"].tolist() == ["done", "done"], lines
    expected = reference(tmp_path, sweep, tiny)
    for config in sweep.configs:
        assert_same_run(read_records(run_dir(config)), expected[run_name(config)])


@pytest.mark.tiny
def test_a_killed_sweep_restarts_and_finishes_as_an_uninterrupted_one(tmp_path, tiny):
    """SIGKILL to the launcher mid-way: its workers die with it (no orphan holds a run), and a restart finishes
    every run with the records of an uninterrupted sweep, never computing a logged step twice."""
    path = sweep_file(tmp_path, name="kill", workers=2,
                      base={**TINY, "model_name": tiny.name, "train_k": 120, "test_every": 60,
                            "output_dir": str(tmp_path / "out")},
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
    expected = reference(tmp_path, sweep, tiny)
    for config in sweep.configs:
        records = read_records(run_dir(config))
        assert [r.step for r in records] == list(range(120))
        assert_same_run(records, expected[run_name(config)])
        assert len(records) >= logged[run_name(config)]




def test_where_selects_runs_and_names_a_bad_condition():
    from icrl_lib.sweeps.sweep import filtered

    grid = load_sweep(ROOT / "params" / "sweeps" / "paper_grid.yaml")
    phi = filtered(grid, ["model_name=microsoft/Phi-3.5-mini-instruct", "task_name=nlu"])
    assert len(phi.configs) == 4 and {c.task_name for c in phi.configs} == {"nlu"}
    with pytest.raises(UserError, match="--where: expected FIELD=VALUE with a config field, got 'modl=x'"):
        filtered(grid, ["modl=x"])
    with pytest.raises(UserError, match="no run of paper_grid matches task_name=mnist"):
        filtered(grid, ["task_name=mnist"])


