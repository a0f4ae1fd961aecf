"""Prepare once: the plan decides a run without its weights; the schedule with the paper's ICL stop rule; the pure
replay check that every resume runs first."""
from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from icrl_lib.errors import UserError
from icrl_lib.paths import project_root
from icrl_lib.runs.context import ContextBuilder
from icrl_lib.runs.identity import run_dir
from icrl_lib.runs.plan import Schedule, checkout_state, prepare, provenance, test_schedule
from icrl_lib.runs.replay import replay
from tests.helpers import TICKETS, small


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
    assert set(plan.trie.labels) == set(plan.task.labels) and len(plan.exemplars) == 0
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


class _FirstStep(Exception):
    """Raised where the loop would compute its first step: the walk measured below ends there."""


def _entries(walk) -> tuple[dict[str, set], dict[str, int]]:
    """Run ``walk()`` under ``sys.setprofile`` until it reaches the loop's first step.

    An *entry* into an icrl_lib file F is a distinct pair (calling line in another icrl_lib file, function of F) seen
    as a call event: control passing into F from elsewhere in the library, counted once per place it passes from (a
    loop over rows that calls F from one line is one entry; the same check made from two places is two; the walk's
    own calls into the library are its start, not entries). Counted: module-level
    functions, nested functions (callbacks), classmethods and constructors (``__init__``, ``__post_init__``): asking
    F to compute something. Not counted: methods and properties of a value F already handed out (a Task's
    ``answer``, a store's ``append``), which use that value, and module bodies (imports). Returns the entries per
    file (relative to icrl_lib/) and how often each function ran (by qualified name), for the exact counts."""
    import collections
    import sys

    from icrl_lib.runs import loop

    package = str(Path(loop.__file__).parents[1]) + os.sep
    entries, calls = collections.defaultdict(set), collections.Counter()

    def profile(frame, event, arg):
        code = frame.f_code
        if event != "call" or not code.co_filename.startswith(package) or code.co_name == "<module>":
            return
        calls[code.co_qualname] += 1
        caller = frame.f_back
        if caller is None or caller.f_code.co_filename in (code.co_filename,) or \
                not caller.f_code.co_filename.startswith(package):
            return
        parts = code.co_qualname.split(".")
        first = code.co_varnames[0] if code.co_argcount else None
        on_value = len(parts) > 1 and parts[-2] != "<locals>" and not isinstance(frame.f_locals.get(first), type)
        if on_value and code.co_name not in ("__init__", "__post_init__"):
            return
        entries[code.co_filename[len(package):]].add((f"{caller.f_code.co_filename}:{caller.f_lineno}",
                                                       code.co_qualname))

    def first_step(self, step):
        sys.setprofile(None)
        raise _FirstStep

    original = loop.Stepper.step
    loop.Stepper.step = first_step
    sys.setprofile(profile)
    try:
        walk()
    except _FirstStep:
        pass
    finally:
        sys.setprofile(None)
        loop.Stepper.step = original
    return entries, calls


@pytest.mark.tiny
@pytest.mark.parametrize("loaded", [True, False], ids=["model given", "model loaded by the run"])
def test_walking_a_config_to_its_first_step_enters_each_file_at_most_twice(tmp_path, tiny, loaded):
    """The run plan is the one source: from the config's values (as ``icrl run`` and the notebooks make it: a mapping,
    paths resolved) through ``run_experiment`` to the first step, the task name is parsed and its file read once,
    the config validated and each field's type checked once, the run folder named once, and no icrl_lib file is
    entered more than twice (see :func:`_entries`). A first walk warms what a process does once (imports, git)."""
    from icrl_lib.runs.config import load_config, with_paths_resolved
    from icrl_lib.runs.loop import run_experiment

    def walk(name: str):
        values = {**small(tmp_path / name, model_name=tiny.name).to_dict()}
        return lambda: run_experiment(with_paths_resolved(load_config(values)), progress=False,
                                      lm=tiny if loaded else None)

    _entries(walk("warm"))
    entries, calls = _entries(walk("measured"))
    counts = {file: len(found) for file, found in sorted(entries.items())}
    print("entries per file:", counts)
    assert max(counts.values()) <= 2, {f: sorted(e) for f, e in entries.items() if len(e) > 2}
    assert calls["ExperimentConfig.validate"] == 1 and calls["_check_type"] == len(dataclasses.fields(config_type()))
    assert calls["parse_task_name"] == calls["read_spec"] == calls["run_name"] == 1
    assert calls["run_dir"] == 1 and calls["read_meta"] == calls["read_data"] == 1  # side files: the store's readers


def config_type():
    from icrl_lib.runs.config import ExperimentConfig

    return ExperimentConfig


@pytest.mark.tiny
def test_a_run_folder_keeps_its_name_for_a_task_file_and_its_variants(tmp_path, tiny):
    """The parsed task name carries the label run folders show: a task file's ``name`` plus its variants, as the
    (never-failing) ``task_label`` of any listing reads it."""
    from icrl_lib.tasks.task import task_label

    config = small(tmp_path, model_name=tiny.name, task_name=TICKETS + "_top3_unsemantic")
    assert config.task.label == task_label(config.task_name) == "support_tickets_top3_unsemantic"
    assert run_dir(config).name.startswith("support_tickets_top3_unsemantic__")
    assert prepare(config).run_dir == run_dir(config)
