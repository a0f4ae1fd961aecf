"""plots.py on small hand-built tables with the results.py columns; expected values worked out by hand."""
from __future__ import annotations

import math

import pandas as pd
import plotly.graph_objects as go
import pytest

from icrl_lib.analysis import plots, stats


def one_run_steps() -> pd.DataFrame:
    # rewards 1 0 0 1 1 1 -> regret (count of zeros so far) 0 1 2 2 2 2
    return pd.DataFrame({
        "step": [0, 1, 2, 3, 4, 5],
        "reward": [1, 0, 0, 1, 1, 1],
        "regret": [0, 1, 2, 2, 2, 2],
        "context_size": [0, 1, 1, 2, 2, 3],
        "context_positive": [0, 1, 1, 2, 2, 3],
        "context_index": [None] * 6,
        "prompt_tokens": [100, 110, 120, 130, 140, 150],
        "computed_tokens": [100, 10, 20, 10, 10, 10],
    })


def many_runs_steps() -> pd.DataFrame:
    rows = []
    # run a: explorative on banking77, 3 steps, rewards 1 0 1 -> final regret 1
    for step, reward, regret in [(0, 1, 0), (1, 0, 1), (2, 1, 1)]:
        rows.append(("a", "banking77", "explorative ICRL", step, reward, regret, 50, 5))
    # run b: explorative on banking77 with another seed, rewards 0 0 -> final regret 2
    for step, reward, regret in [(0, 0, 1), (1, 0, 2)]:
        rows.append(("b", "banking77", "explorative ICRL", step, reward, regret, 60, 6))
    # run c: naive on banking77, rewards 0 0 0 -> final regret 3
    for step, reward, regret in [(0, 0, 1), (1, 0, 2), (2, 0, 3)]:
        rows.append(("c", "banking77", "naive ICRL", step, reward, regret, 70, 70))
    return pd.DataFrame(rows, columns=["run", "task_name", "method", "step", "reward", "regret",
                                       "prompt_tokens", "computed_tokens"])


def test_moving_accuracy_window_and_cumulative():
    steps = one_run_steps()
    assert plots.moving_accuracy(steps, 2).tolist() == [1.0, 0.5, 0.0, 0.5, 1.0, 1.0]
    cumulative = plots.moving_accuracy(steps, None).tolist()
    assert cumulative == pytest.approx([1, 1 / 2, 1 / 3, 2 / 4, 3 / 5, 4 / 6])


def test_moving_accuracy_skips_icl_steps_and_keeps_runs_apart():
    steps = pd.DataFrame({"step": [0, 0, 1, 1, 2], "run": ["x", "y", "x", "y", "x"],
                          "reward": [1, None, 0, None, 0]})
    result = plots.moving_accuracy(steps, 2, by="run")
    # run x: 1, (1+0)/2, (0+0)/2; run y has no rewards (ICL) -> NaN
    assert result.tolist()[0] == 1.0 and result.tolist()[2] == 0.5 and result.tolist()[4] == 0.0
    assert math.isnan(result.tolist()[1]) and math.isnan(result.tolist()[3])


@pytest.mark.parametrize("window", [0, -3, 2.5])
def test_moving_accuracy_rejects_bad_window(window):
    with pytest.raises(ValueError, match="window"):
        plots.moving_accuracy(one_run_steps(), window)


def test_running_accuracy_figure_one_line():
    fig = plots.running_accuracy_figure(one_run_steps(), window=3)
    assert len(fig.data) == 1
    # window 3 over 1 0 0 1 1 1: 1, 1/2, 1/3, 1/3, 2/3, 1
    assert list(fig.data[0].y) == pytest.approx([1, 1 / 2, 1 / 3, 1 / 3, 2 / 3, 1])
    assert "last 3 steps" in fig.layout.title.text


def test_test_accuracy_figure_one_line_per_group_in_paper_order():
    tests = pd.DataFrame({"step": [4, 0, 0, 4], "accuracy": [0.5, 0.1, 0.2, 0.6],
                          "method": ["naive ICRL", "naive ICRL", "ICL", "ICL"]})
    fig = plots.test_accuracy_figure(tests, by="method")
    assert [t.name for t in fig.data] == ["ICL", "naive ICRL"]
    assert list(fig.data[1].x) == [0, 4] and list(fig.data[1].y) == [0.1, 0.5]


def test_missing_column_names_it():
    with pytest.raises(ValueError, match="accuracy"):
        plots.test_accuracy_figure(pd.DataFrame({"step": [0]}))


def test_regret_figure_follows_regret_column():
    fig = plots.regret_figure(one_run_steps())
    assert list(fig.data[0].y) == [0, 1, 2, 2, 2, 2]


def test_context_figure_adds_context_index_only_for_approximate():
    steps = one_run_steps()
    assert len(plots.context_figure(steps).data) == 2
    approx = steps.assign(context_index=[3, 1, 1, 0, 7, 2])
    fig = plots.context_figure(approx)
    assert [t.name for t in fig.data][2] == "context index (approximate)"
    assert list(fig.data[2].y) == [3, 1, 1, 0, 7, 2] and fig.data[2].yaxis == "y2"


def test_main_comparison_averages_seeds_with_an_interval_and_draws_references_flat():
    runs = pd.DataFrame({
        "run": ["z", "i", "i", "e1", "e1", "e2", "e2", "other"],
        "task_name": ["trec_coarse"] * 7 + ["banking77"],
        "model_name": ["m"] * 8,
        "method": ["zero-shot", "ICL", "ICL", "explorative ICRL", "explorative ICRL", "explorative ICRL",
                   "explorative ICRL", "ICL"],
        "step": [0, 0, 4, 0, 4, 0, 4, 4],
        "accuracy": [0.2, 0.3, 0.6, 0.1, 0.5, 0.3, 0.7, 0.9],
        "n": [10] * 8,
    })
    fig = plots.main_comparison_figure(runs, task="trec_coarse", model="m")
    lines = [t for t in fig.data if t.showlegend is not False]
    assert [t.name for t in lines] == ["zero-shot (n=1)", "ICL (n=1)", "explorative ICRL (n=2)"]
    zero, icl, explorative = lines
    assert list(zero.x) == [0, 4] and list(zero.y) == [0.2, 0.2] and zero.line.dash == "dash"
    assert list(icl.x) == [0, 4] and list(icl.y) == [0.6, 0.6]  # the upper bound: ICL's last value, flat
    assert list(explorative.y) == pytest.approx([0.2, 0.6])  # mean of (0.1, 0.3) and (0.5, 0.7)
    band = next(t for t in fig.data if t.fill == "toself")
    # two seeds on 10 queries: test-query noise and seed noise together (aggregate's rule), clipped to [0, 1]
    first, last = stats.accuracy_interval(0.2, 10, [0.1, 0.3]), stats.accuracy_interval(0.6, 10, [0.5, 0.7])
    assert band.legendgroup == "explorative ICRL"
    assert list(band.y) == pytest.approx([first.high, last.high, last.low, first.low])
    assert first.low == 0 and 0 < last.low < 0.6 < last.high < 1
    only = plots.main_comparison_figure(runs, task="trec_coarse", methods=["ICL"])
    assert [t.name for t in only.data] == ["ICL (n=1)"]


def test_main_comparison_with_no_rows_is_empty():
    runs = pd.DataFrame(columns=["task_name", "model_name", "method", "step", "accuracy"])
    assert len(plots.main_comparison_figure(runs, task="nlu").data) == 0


def test_final_steps_and_regret_bars():
    steps = many_runs_steps()
    assert plots.final_steps(steps).set_index("run")["regret"].to_dict() == {"a": 1, "b": 2, "c": 3}
    fig = plots.regret_bar_figure(steps)
    assert [t.name for t in fig.data] == ["naive ICRL", "explorative ICRL"]
    # per training step, so a 2-step and a 3-step run compare: naive 3/3; explorative (1/3 + 2/2) / 2
    assert list(fig.data[0].y) == [1.0] and list(fig.data[1].y) == [pytest.approx(2 / 3)]
    variants = steps.assign(method=steps["run"].map({"a": "explorative ICRL", "b": "explorative ICRL (p_keep=0.5)",
                                                     "c": "explorative ICRL (p_keep=1)"}))
    bars = plots.regret_bar_figure(variants).data
    looks = {(b.marker.color, b.marker.pattern.shape) for b in bars}
    assert len(looks) == 3 and {b.marker.color for b in bars} == {"#1f77b4"}  # one method's colour, three hatches
    assert bars[0].marker.pattern.shape == "" and plots.regret_bar_figure(variants).layout.legend.orientation == "h"


def test_token_totals_and_figure():
    steps = many_runs_steps()
    totals = plots.token_totals(steps, ["method"]).set_index("run")
    assert totals.loc["a", "prompt_tokens"] == 150 and totals.loc["a", "computed_tokens"] == 15
    assert totals.loc["b", "steps"] == 2 and totals.loc["c", "computed_tokens"] == 210
    fig = plots.tokens_figure(steps, label="method")
    by_name = {t.name: dict(zip(t.x, t.y)) for t in fig.data}
    assert by_name["prompt tokens"] == {"explorative ICRL": 150 + 120, "naive ICRL": 210}
    assert by_name["computed tokens"] == {"explorative ICRL": 15 + 12, "naive ICRL": 210}
    one = plots.token_totals(one_run_steps().drop(columns=["context_index"]))
    assert one.iloc[0].to_dict() == {"prompt_tokens": 750, "computed_tokens": 160, "steps": 6}


def test_save_html_is_self_contained(tmp_path):
    fig = go.Figure(go.Scatter(x=[0, 1], y=[0.25, 0.75]))
    path = plots.save_html(fig, tmp_path / "sub" / "fig.html")
    text = path.read_text(encoding="utf-8")
    assert "<html>" in text[:200] and text.rstrip().endswith("</html>")
    assert "<script src=" not in text and len(text) > 1_000_000  # plotly.js itself is inside the file
    assert [p.name for p in path.parent.iterdir()] == ["fig.html"]  # no temporary file left behind
    with pytest.raises(ValueError, match="path"):
        plots.save_html(fig, tmp_path / "fig.png")


def test_empty_figure_carries_message():
    fig = plots.empty_figure("no runs yet")
    assert fig.layout.annotations[0].text == "no runs yet" and len(fig.data) == 0


def test_collapse_figure_draws_distinct_labels_and_entropy():
    from icrl_lib.runs.tables import window_collapse

    steps = pd.DataFrame({"step": [0, 1, 2, 3], "prediction": ["a", "b", "b", "b"]})
    steps = pd.concat([steps, window_collapse(steps["prediction"], window=2)], axis=1)
    fig = plots.collapse_figure(steps)
    distinct, entropy = fig.data
    assert list(distinct.y) == [1, 2, 1, 1] and list(entropy.y) == [0, 1, 0, 0]  # windows: a, ab, bb, bb
    assert entropy.yaxis == "y2" and fig.layout.yaxis2.title.text == "entropy (bits)"
