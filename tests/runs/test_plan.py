"""Prepare once: the plan decides a run without its weights; the schedule with the paper's ICL stop rule; the pure
replay check that every resume runs first."""
from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import time

import pytest

from icrl_lib.errors import UserError
from icrl_lib.paths import project_root
from icrl_lib.runs.context import ContextBuilder
from icrl_lib.runs.plan import Schedule, checkout_state, prepare, provenance, test_schedule
from icrl_lib.runs.replay import replay
from icrl_lib.runs.store import run_dir
from tests.helpers import small


def test_the_test_schedule_is_the_papers_plus_the_last_step():
    assert test_schedule(30, 15) == (0, 14, 29)
    assert test_schedule(10, 4) == (0, 3, 7, 9)


@pytest.mark.parametrize("budget,steps", [(1499, 1500), (1500, 2000), (1672, 2000), (20000, 10000)])
def test_icl_stops_where_the_papers_icl_runs_stopped(tmp_path, budget, steps):
    """The paper's ICL runs (10,000 steps asked, a test every 500) stop at the first test at or after the context is
    full: Llama-3.1-8B's 128K window holds 1,672 Banking77 episodes (its capacity table, less its off-by-one), so
    paper.yaml's ICL arm runs 2,000 steps, not 10,000."""
    config = small(tmp_path, icrl=False, context_strategy_name="random_unbiased", context_p_keep=1.0,
                   max_context_examples=None, train_k=10000, test_every=500, test_k=500)
    schedule = Schedule.of(config, budget)
    assert schedule.steps == steps and schedule.test_steps[-1] == steps - 1
    icrl = Schedule.of(dataclasses.replace(config, icrl=True), budget)
    assert icrl.steps == 10000 and len(icrl.test_steps) == 21


@pytest.mark.tiny
def test_a_plan_is_made_without_weights_and_holds_what_the_run_needs(tmp_path, tiny):
    config = small(tmp_path, model_name=tiny.name)
    plan = prepare(config)  # the model's folder: tokenizer and config files only
    assert plan.run_dir == run_dir(config) and not plan.run_dir.exists()  # nothing written before the lock
    assert plan.model.eot_id == tiny.eot_id and plan.model.context_window == 8192 and plan.budget == 8
    assert plan.schedule == Schedule(30, (0, 14, 29)) and len(plan.data.stream) == 30 and len(plan.data.test) == 10
    assert set(plan.trie.labels) == set(plan.task.labels) and plan.fingerprint["test_size"] == 10
    assert plan.summary()["provenance"]["transformers"] == provenance().transformers


def test_provenance_names_the_revision_and_the_versions():
    p = provenance()
    assert p.revision and len(p.revision) == 40 and isinstance(p.dirty, bool)
    assert p.line().startswith(f"icrl {p.icrl} (commit {p.revision[:10]}") and f"torch {p.torch}" in p.line()


@pytest.mark.tiny
@pytest.mark.parametrize("doctor,problem", [
    (lambda r: dataclasses.replace(r, step=r.step + 1), "expected step 3"),
    (lambda r: dataclasses.replace(r, train=dataclasses.replace(r.train, reward=1 - r.train.reward)),
     "reward 1 does not match prediction and answer"),
    (lambda r: dataclasses.replace(r, train=dataclasses.replace(r.train, feedback=1 - r.train.feedback)),
     "feedback does not follow from the reward and the flip coin"),
    (lambda r: dataclasses.replace(r, train=dataclasses.replace(r.train, prediction="no such team")),
     "prediction 'no such team' is not a label"),
    (lambda r: dataclasses.replace(r, train=dataclasses.replace(r.train, input="another ticket")),
     "the logged training input differs from the data stream"),
    (lambda r: dataclasses.replace(r, context=dataclasses.replace(r.context, indices=(0, 1, 2))),
     "the context differs from what the strategy draws"),
])
@pytest.mark.tiny
def test_replay_refuses_a_doctored_record_with_file_and_line_without_a_model(tmp_path, tiny, tiny_reference, doctor,
                                                                               problem):
    plan = prepare(small(tmp_path, model_name=tiny.name))
    records = list(tiny_reference.records)
    assert records[3].train.reward == 0  # the doctors below need a wrong prediction at step 3
    replay(plan, records, ContextBuilder(plan), tmp_path / "steps.jsonl")  # the true log passes
    records[3] = doctor(records[3])
    with pytest.raises(UserError, match=rf"steps.jsonl: line 4: {problem}"):
        replay(plan, records, ContextBuilder(plan), tmp_path / "steps.jsonl")


@pytest.mark.slow
def test_provenance_knows_a_fresh_clone_is_clean_though_its_notebooks_pass_the_strip_filter(tmp_path):
    """In a fresh clone (or after touching the notebooks) `git status` runs the nbstripout filter on every notebook,
    about 2 s each (importing nbformat); CI's clean clone once took past a 10 s limit and recorded 'dirty: unknown'.
    The clone is configured by the Makefile's own `git-filter` target."""
    root = project_root()
    if not (root / ".git").exists():
        pytest.skip("not a git checkout")
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(root), str(clone)], check=True)
    subprocess.run(["make", "-s", "-C", str(clone), "git-filter", f"VENV={sys.prefix}"], check=True)
    notebooks = sorted((clone / "notebooks").glob("*.ipynb"))
    assert len(notebooks) >= 5
    later = time.time() + 5
    for nb in notebooks:  # stat data no longer matches the index: git must filter each one again
        os.utime(nb, (later, later))
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=clone, capture_output=True, text=True).stdout.strip()
    assert checkout_state(clone) == (head, False)
    (clone / "README.md").write_text("changed\n")
    assert checkout_state(clone) == (head, True)
