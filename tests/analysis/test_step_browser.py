"""The step inspector's JupyterLab widget: the page shows the step the inspector rebuilds, episodes coloured by
reward, the context's diff; the pickers follow the run, and "reload" sees steps logged since (a running run)."""
from __future__ import annotations

import dataclasses

import pytest

from icrl_lib.analysis import step_browser
from icrl_lib.runs.inspector import StepInspector
from icrl_lib.runs.loop import run_experiment
from tests.helpers import small


@pytest.mark.tiny
def test_the_widget_browses_steps_and_queries_and_reloads_a_growing_run(tmp_path, tiny):
    config = small(tmp_path, model_name=tiny.name, train_k=20, test_every=10, context_p_keep=1.0,
                   context_strategy_name="random_biased_end")  # naive ICRL: rewarded and unrewarded episodes
    run_dir = run_experiment(config, progress=False, lm=tiny).run_dir
    outputs = tmp_path / "out"
    assert step_browser.run_folders(outputs) == [run_dir]
    assert "naive ICRL" in step_browser.run_label(run_dir) and "seed 3" in step_browser.run_label(run_dir)

    box = step_browser.step_browser(outputs)
    runs, (step, reload), (query, _probs), _figure, page = (box.children[0], box.children[1].children,
                                                             box.children[2].children, box.children[3],
                                                             box.children[4])
    assert runs.value == str(run_dir) and step.max == 19 and "step 0 of 20 logged, training query" in page.value
    step.value = 9  # a test step: the training query and every test query
    assert query.options[0] == ("training query", -1) and len(query.options) == 1 + 10
    assert "step 9 of 20 logged" in page.value
    query.value = 3
    assert "test query 3 of 10" in page.value
    inspector = StepInspector.open(run_dir)
    view = next(v for v in map(inspector.view, range(20)) if {e.reward for e in v.episodes} == {0, 1})
    step.value = view.step  # a context holding rewarded and unrewarded episodes: each in its colour
    assert f"step {view.step} of 20 logged" in page.value and f"{view.token_count} prompt tokens" in page.value
    blocks = page.value.split('<div style="background:')[1:]
    assert [b.split(";")[0] for b in blocks] == [step_browser.REWARD_COLOURS[e.reward] for e in view.episodes]
    assert [f"[step {e.index}]" in b for b, e in zip(blocks, view.episodes)] == [True] * len(view.episodes)

    # The run goes on (a larger train_k continues it): reload sees the new steps without losing the place.
    run_experiment(dataclasses.replace(config, train_k=30), progress=False, lm=tiny)
    reload.click()
    assert step.max == 29 and step.value == view.step
    step.value = 25
    assert "step 25 of 30 logged" in page.value


@pytest.mark.tiny
def test_the_page_says_what_changed_and_the_static_view_reads_the_newest_run(tmp_path, tiny):
    run_dir = run_experiment(small(tmp_path, model_name=tiny.name), progress=False, lm=tiny).run_dir
    inspector = StepInspector.open(run_dir)
    view = next(v for v in (inspector.view(s) for s in range(1, 30)) if v.added)
    html = step_browser.step_html(view)
    assert f"added {', '.join(map(str, view.added))}" in html and "<b>new</b>" in html
    assert "the exact prompt" in html and view.prompt.splitlines()[-1] in html
    last = step_browser.last_step(tmp_path / "out")
    assert last.step == 29 and last.run_dir == run_dir
    assert step_browser.last_step(tmp_path / "nothing") is None
