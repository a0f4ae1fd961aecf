"""Plotly figures of ICRL runs, drawn from the tables of :mod:`icrl_lib.analysis.load`.

Every function takes a tidy DataFrame (``steps_table`` / ``tests_table`` of one run, or ``load.read``
tables over many) and returns a ``plotly.graph_objects.Figure``; nothing here reads files or runs
a model. ``by`` names the column whose values become separate lines (e.g. ``"method"`` or ``"run"``); ``None``
draws one line. :func:`save_html` writes a figure as one self-contained HTML file that opens offline.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go

from icrl_lib.analysis.load import final_steps, require_columns, run_column, token_totals
from icrl_lib.analysis.styles import color_of, styles
from icrl_lib.paper.methods import method_order
from icrl_lib.runs.inspector import StepView

_LAYOUT = dict(template="plotly_white", hovermode="x unified", legend_title_text="")
_require = require_columns


def _groups(df: pd.DataFrame, by: str | None) -> list[tuple[str, pd.DataFrame]]:
    """(legend name, rows sorted by step) per value of ``by``; methods in the paper's order."""
    if by is None:
        return [("", df.sort_values("step"))]
    _require(df, [by], "by")
    names = df[by].dropna().unique().tolist()
    names = method_order(names) if by == "method" else sorted(names, key=str)
    return [(str(name), df[df[by] == name].sort_values("step")) for name in names]


def _line(name: str, names: list[str]) -> dict:
    """A run name's colour and dash among the ``names`` of its figure (methods.styles): a method looks the same in
    every figure, and no two lines of one figure look alike."""
    color, dash = styles(names)[name]
    return dict(color=color, dash=dash)


def _line_figure(df: pd.DataFrame, y: str, by: str | None, title: str, y_title: str,
                 percent: bool = False) -> go.Figure:
    fig = go.Figure()
    groups = _groups(df, by)
    names = [name for name, _ in groups]
    for name, rows in groups:
        fig.add_trace(go.Scatter(x=rows["step"], y=rows[y], mode="lines+markers" if len(rows) < 30 else "lines",
                                 name=name or y_title, showlegend=by is not None,
                                 line=_line(name, names) if by == "method" else None))
    fig.update_layout(title=title, xaxis_title="step", yaxis_title=y_title, **_LAYOUT)
    if percent:
        fig.update_yaxes(range=[0, 1], tickformat=".0%")
    return fig


def test_accuracy_figure(tests: pd.DataFrame, *, by: str | None = None,
                         title: str = "Test accuracy") -> go.Figure:
    """Test accuracy over steps (columns ``step``, ``accuracy``), one line per value of ``by``."""
    _require(tests, ["step", "accuracy"], "test_accuracy_figure")
    return _line_figure(tests, "accuracy", by, title, "test accuracy", percent=True)


def moving_accuracy(steps: pd.DataFrame, window: int | None, by: str | None = None) -> pd.Series:
    """Mean reward over the last ``window`` training steps (None: since step 0), per ``by`` group.

    Steps without a reward (ICL episodes) are left out; the result is aligned to ``steps``' index.
    """
    if window is not None and (not isinstance(window, int) or window < 1):
        raise ValueError(f"window: must be None (cumulative) or an integer >= 1, got {window!r}")
    _require(steps, ["step", "reward"], "moving_accuracy")
    rewards = steps.sort_values("step")["reward"].astype("float64")
    keys = steps.loc[rewards.index, by] if by is not None else pd.Series(0, index=rewards.index)
    valid = rewards.dropna()
    grouped = valid.groupby(keys.loc[valid.index], sort=False)
    if window is None:
        smooth = grouped.cumsum() / grouped.cumcount().add(1)
    else:
        smooth = grouped.transform(lambda s: s.rolling(window, min_periods=1).mean())
    return smooth.reindex(steps.index)


def running_accuracy_figure(steps: pd.DataFrame, *, window: int | None = 50, by: str | None = None,
                            title: str | None = None) -> go.Figure:
    """Training accuracy (reward) averaged over a moving ``window`` of steps; None = cumulative."""
    table = steps.assign(moving_accuracy=moving_accuracy(steps, window, by)).dropna(subset=["moving_accuracy"])
    label = "cumulative" if window is None else f"last {window} steps"
    return _line_figure(table, "moving_accuracy", by, title or f"Training accuracy ({label})",
                        "training accuracy", percent=True)


def regret_figure(steps: pd.DataFrame, *, by: str | None = None, title: str = "Cumulative regret") -> go.Figure:
    """Cumulative regret (count of reward 0 so far, column ``regret``) over steps."""
    _require(steps, ["step", "regret"], "regret_figure")
    return _line_figure(steps.dropna(subset=["regret"]), "regret", by, title, "cumulative regret")


def collapse_figure(steps: pd.DataFrame, *, title: str = "Exploration: labels predicted in recent training steps"
                    ) -> go.Figure:
    """Distinct labels and their entropy (bits) among the latest training predictions (``results.window_collapse``):
    exploration collapse, the paper's central failure, shows as both falling to 1 label / 0 bits."""
    _require(steps, ["step", "window_distinct_labels", "window_label_entropy"], "collapse_figure")
    rows = steps.dropna(subset=["window_distinct_labels"]).sort_values("step")
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=rows["step"], y=rows["window_distinct_labels"], name="distinct labels", mode="lines"))
    fig.add_trace(go.Scatter(x=rows["step"], y=rows["window_label_entropy"], name="entropy (bits)", mode="lines",
                             yaxis="y2"))
    fig.update_layout(title=title, xaxis_title="step", yaxis=dict(title="distinct labels", rangemode="tozero"),
                      yaxis2=dict(title="entropy (bits)", overlaying="y", side="right", showgrid=False,
                                  rangemode="tozero"), **_LAYOUT)
    return fig


def context_figure(steps: pd.DataFrame, *, title: str = "Context over steps") -> go.Figure:
    """Context size and positive-feedback episodes per step; approximate ICRL adds which context was used."""
    _require(steps, ["step", "context_size", "context_positive"], "context_figure")
    rows = steps.sort_values("step")
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=rows["step"], y=rows["context_size"], name="episodes in context", mode="lines"))
    fig.add_trace(go.Scatter(x=rows["step"], y=rows["context_positive"], name="with positive feedback",
                             mode="lines"))
    if "context_index" in rows.columns and rows["context_index"].notna().any():
        chosen = rows.dropna(subset=["context_index"])
        fig.add_trace(go.Scatter(x=chosen["step"], y=chosen["context_index"], name="context index (approximate)",
                                 mode="markers", marker=dict(size=4), yaxis="y2"))
        fig.update_layout(yaxis2=dict(title="context index", overlaying="y", side="right", showgrid=False,
                                      rangemode="tozero", dtick=1))
    fig.update_layout(title=title, xaxis_title="step", yaxis_title="episodes", **_LAYOUT)
    return fig


def _select(runs: pd.DataFrame, task: str | None, model: str | None, methods: Sequence[str] | None) -> pd.DataFrame:
    keep = pd.Series(True, index=runs.index)
    if task is not None:
        keep &= runs["task_name"] == task
    if model is not None:
        keep &= runs["model_name"] == model
    if methods is not None:
        keep &= runs["method"].isin(list(methods))
    return runs[keep]


REFERENCES = ("zero-shot", "ICL")  # drawn as the paper draws them: flat lines across the whole x range


def _band(x, low, high, color: str, group: str) -> go.Scatter:
    """A translucent 95% interval band (one closed polygon) that shares its line's legend entry."""
    r, g, b = (int(color[i:i + 2], 16) for i in (1, 3, 5))
    return go.Scatter(x=list(x) + list(x)[::-1], y=list(high) + list(low)[::-1], fill="toself", mode="lines",
                      line=dict(width=0), fillcolor=f"rgba({r},{g},{b},0.15)", hoverinfo="skip", showlegend=False,
                      legendgroup=group, name=f"{group} 95% interval")


def main_comparison_figure(runs: pd.DataFrame, *, task: str, model: str | None = None,
                           methods: Sequence[str] | None = None, title: str | None = None) -> go.Figure:
    """The paper's main plot for one task: test accuracy over steps, one line per run name (method and settings),
    the mean over seeds with its 95% interval as a band and n in the legend (``aggregate.accuracy_curves``).

    ``runs`` is ``load.read(...).tests`` (one row per test step). Zero-shot and ICL are references, drawn the paper's
    way: a dashed horizontal line at their last value (ICL: the upper bound) across the steps of the others.
    """
    from icrl_lib.analysis.aggregate import accuracy_curves

    _require(runs, ["task_name", "model_name", "method", "step", "accuracy"], "main_comparison_figure")
    curves = accuracy_curves(_select(runs, task, model, methods))
    last = int(curves["step"].max()) if len(curves) else 0
    fig = go.Figure()
    names = method_order(curves["method"].unique().tolist())
    for method in names:
        line = curves[curves["method"] == method].sort_values("step")
        n = int(line["n"].max())
        label, color = f"{method} (n={n})", color_of(method, names)
        if (method.split(" (")[0] in REFERENCES or len(line) == 1) and last > 0:
            end = line.iloc[-1]
            fig.add_trace(go.Scatter(x=[0, last], y=[end["mean"]] * 2, name=label, mode="lines", legendgroup=method,
                                     line=dict(color=color, dash="dash"),
                                     hovertemplate=f"{method}: %{{y:.1%}} (step {int(end['step'])}, n={n})"))
            continue
        if line["low"].notna().any():
            fig.add_trace(_band(line["step"], line["low"], line["high"], color, method))
        fig.add_trace(go.Scatter(x=line["step"], y=line["mean"], name=label, mode="lines+markers", legendgroup=method,
                                 line=_line(method, names), customdata=line[["low", "high"]].values,
                                 hovertemplate="%{y:.1%} [%{customdata[0]:.1%}, %{customdata[1]:.1%}]"))
    model_text = f" — {model}" if model else ""
    sizes = ""
    if len(curves):
        chosen = _select(runs, task, model, methods)
        queries = int(chosen["n"].max()) if "n" in chosen else 0
        sizes = f"<br><sup>up to {last + 1:,} steps · {queries} test queries · n = seeds per line</sup>"
    fig.update_layout(title=title or f"{task}{model_text}: test accuracy (mean over seeds, 95% interval){sizes}",
                      xaxis_title="step", yaxis_title="test accuracy", showlegend=True, **_LAYOUT)
    _legend_below(fig, len(names))
    fig.update_yaxes(range=[0, 1], tickformat=".0%")
    return fig


def _legend_below(fig: go.Figure, entries: int) -> None:
    """A horizontal legend under the plot, wrapping: long run names no longer squeeze the plot's width."""
    rows = max(1, (entries + 2) // 3)
    fig.update_layout(legend=dict(orientation="h", yanchor="top", y=-0.18, xanchor="left", x=0),
                      height=420 + 22 * rows, margin=dict(b=60 + 22 * rows))


PATTERNS = {"solid": "", "dash": "/", "dot": ".", "dashdot": "x", "longdash": "-", "longdashdot": "+"}  # bars


def regret_bar_figure(steps: pd.DataFrame, *, x: str = "task_name", color: str = "method",
                      title: str = "Regret per training step (wrong predictions / steps)") -> go.Figure:
    """Each run's final regret divided by its training steps (runs of 4 and 600 steps compare), bars grouped by
    ``x`` and styled by ``color`` (mean over runs): a method's colour, its variants in a hatch pattern."""
    _require(steps, ["step", "regret", x, color], "regret_bar_figure")
    trained = steps.dropna(subset=["regret"])
    key = run_column(trained)
    counts = trained.groupby(key)["step"].count() if key else pd.Series({None: len(trained)})
    final = final_steps(trained)
    final = final.assign(per_step=final["regret"] / (final[key].map(counts) if key else len(trained)))
    table = final.groupby([x, color], as_index=False)["per_step"].mean()
    names = table[color].unique().tolist()
    look = styles([str(n) for n in names]) if color == "method" else {}
    fig = go.Figure()
    for name in method_order(names) if color == "method" else sorted(names, key=str):
        bars = table[table[color] == name]
        colour, dash = look.get(str(name), (None, "solid"))
        fig.add_trace(go.Bar(x=bars[x], y=bars["per_step"], name=str(name), marker_color=colour,
                             marker_pattern_shape=PATTERNS[dash], hovertemplate="%{y:.2f}"))
    fig.update_layout(title=title, barmode="group", xaxis_title=x, yaxis_title="regret per step",
                      **{**_LAYOUT, "hovermode": "closest"})
    fig.update_yaxes(range=[0, 1])
    _legend_below(fig, len(names))
    return fig


def tokens_figure(steps: pd.DataFrame, *, label: str | Sequence[str] = ("task_name", "method"),
                  title: str = "Tokens processed: computed vs prompt") -> go.Figure:
    """Per run, total prompt tokens (what a cache-less model would process) next to tokens actually computed.

    ``label`` names the column(s) that make each run's axis label; runs sharing a label are summed.
    """
    labels = [label] if isinstance(label, str) else list(label)
    totals = token_totals(steps, labels)
    names = totals[labels].astype(str).agg(" / ".join, axis=1) if labels else pd.Series(["run"] * len(totals))
    table = totals.assign(label=names.values).groupby("label", as_index=False)[
        ["prompt_tokens", "computed_tokens"]].sum()
    fig = go.Figure([
        go.Bar(x=table["label"], y=table["prompt_tokens"], name="prompt tokens"),
        go.Bar(x=table["label"], y=table["computed_tokens"], name="computed tokens"),
    ])
    fig.update_layout(title=title, barmode="group", yaxis_title="tokens", **{**_LAYOUT, "hovermode": "closest"})
    fig.update_yaxes(type="log")
    return fig


def empty_figure(message: str) -> go.Figure:
    """A blank figure carrying ``message`` (used when a table has no rows to draw)."""
    fig = go.Figure()
    fig.add_annotation(text=message, showarrow=False, xref="paper", yref="paper", x=0.5, y=0.5)
    fig.update_layout(xaxis_visible=False, yaxis_visible=False, template="plotly_white")
    return fig


def label_distribution_figure(view: StepView, top: int = 20) -> go.Figure:
    """The distribution over labels one prediction was drawn from (a :class:`~icrl_lib.runs.inspector.StepView`
    with probabilities): the ``top`` most likely labels, and the drawn one wherever it ranks, as bars; the drawn
    label in the accent colour and the gold label outlined."""
    if view.probabilities is None:
        raise ValueError("view: has no probabilities; inspect the step with probs=True")
    shown = [(label, p) for i, (label, p) in enumerate(view.probabilities) if i < top or label == view.prediction]
    labels = [label for label, _ in shown]
    fig = go.Figure(go.Bar(
        x=labels, y=[p for _, p in shown],
        marker_color=["#d62728" if label == view.prediction else "#7f7f7f" for label in labels],
        marker_line_color=["#000000" if label == view.answer else "rgba(0,0,0,0)" for label in labels],
        marker_line_width=2, hovertemplate="%{x}: %{y:.4f}<extra></extra>"))
    where = "training query" if view.kind == "train" else f"test query {view.query}"
    fig.update_layout(template="plotly_white", yaxis_title="probability", yaxis_range=[0, 1],
                      title=f"Step {view.step}, {where}: drew '{view.prediction}' (rank {view.rank}), gold "
                            f"'{view.answer}', temperature {view.temperature:g}")
    return fig


def save_html(fig: go.Figure, path: str | os.PathLike) -> Path:
    """Write ``fig`` as one self-contained HTML file (plotly.js embedded, ~4.8 MB) that opens offline.

    ``include_plotlyjs=True`` is used on purpose: "cdn" needs the network, and "directory" needs a
    ``plotly.min.js`` next to the file, which breaks when the HTML alone is copied or mailed.
    """
    path = Path(path)
    if path.suffix.lower() not in (".html", ".htm"):
        raise ValueError(f"path: must end in .html or .htm, got {str(path)!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fig.write_html(tmp, include_plotlyjs=True, full_html=True)
    os.replace(tmp, path)  # a reader never sees half a file
    return path


def facet_figure(table: pd.DataFrame, y: str, *, title: str, y_title: str, percent: bool = False,
                 references: Sequence[str] = ()) -> go.Figure:
    """One panel per (model, task) (models as rows, tasks as columns), one line per ``method`` with its colour and
    dash in every panel; ``low``/``high`` columns draw a 95% band, ``n`` goes into the legend; methods named in
    ``references`` are flat dashed lines at their last value across the panel's steps (the paper's zero-shot/ICL)."""
    from plotly.subplots import make_subplots

    _require(table, ["model_name", "task_name", "method", "step", y], "facet_figure")
    models, tasks = sorted(table["model_name"].unique()), sorted(table["task_name"].unique())
    fig = make_subplots(rows=max(1, len(models)), cols=max(1, len(tasks)), shared_yaxes=True, shared_xaxes=False,
                        subplot_titles=[f"{t}" + (f" — {m}" if len(models) > 1 else "") for m in models for t in tasks],
                        horizontal_spacing=0.04, vertical_spacing=0.12)
    names = method_order(table["method"].unique().tolist())
    shown: set[str] = set()
    for r, model in enumerate(models, start=1):
        for c, task in enumerate(tasks, start=1):
            panel = table[(table["model_name"] == model) & (table["task_name"] == task)]
            last = panel["step"].max() if len(panel) else 0
            for method in names:
                line = panel[panel["method"] == method].sort_values("step")
                if line.empty:
                    continue
                n = f" (n={int(line['n'].max())})" if "n" in line else ""
                style = dict(legendgroup=method, name=method + n, showlegend=method not in shown)
                shown.add(method)
                if method in references or (len(line) == 1 and last > 0):
                    fig.add_trace(go.Scatter(x=[0, last], y=[line[y].iloc[-1]] * 2, mode="lines",
                                             line=dict(color=color_of(method, names), dash="dash"), **style),
                                  row=r, col=c)
                    continue
                if "low" in line and line["low"].notna().any():
                    fig.add_trace(_band(line["step"], line["low"], line["high"], color_of(method, names), method),
                                  row=r, col=c)
                fig.add_trace(go.Scatter(x=line["step"], y=line[y], mode="lines+markers" if len(line) < 30 else "lines",
                                         line=_line(method, names), **style), row=r, col=c)
    fig.update_layout(title=title, height=max(380, 320 * len(models)), showlegend=True,
                      **{**_LAYOUT, "hovermode": "closest"})
    fig.update_xaxes(title_text="step", row=len(models) or 1)
    fig.update_yaxes(title_text=y_title, col=1)
    if percent:
        fig.update_yaxes(range=[0, 1], tickformat=".0%")
    return fig


def knob_figure(points: pd.DataFrame, *, title: str, x_title: str) -> go.Figure:
    """Final test accuracy (mean and 95% interval over seeds) against a family's knob, one line per ``series``
    (columns series, x, mean, low, high, task_name)."""
    _require(points, ["series", "x", "mean", "low", "high", "task_name"], "knob_figure")
    fig = go.Figure()
    for (series, task), rows in points.sort_values("x").groupby(["series", "task_name"], sort=True):
        name = f"{series} — {task}" if points["task_name"].nunique() > 1 else series
        fig.add_trace(go.Scatter(x=rows["x"], y=rows["mean"], mode="lines+markers", name=name,
                                 error_y=dict(type="data", symmetric=False, array=rows["high"] - rows["mean"],
                                              arrayminus=rows["mean"] - rows["low"])))
    fig.update_layout(title=title, xaxis_title=x_title, yaxis_title="final test accuracy",
                      **{**_LAYOUT, "hovermode": "closest"})
    fig.update_yaxes(range=[0, 1], tickformat=".0%")
    return fig


def compute_figure(tokens: pd.DataFrame, *, title: str = "Compute against accuracy") -> go.Figure:
    """Final test accuracy against training-prompt tokens computed per step, one marker per ``method`` (and task):
    the trade-off of the paper's §4 (approximate ICRL: fewer tokens for about the same accuracy)."""
    _require(tokens, ["method", "task_name", "train_tokens_per_step", "final"], "compute_figure")
    fig = go.Figure()
    names = method_order(tokens["method"].unique().tolist())
    labelled = len(names) <= 6  # more names than that overlap on the plot: the legend and hover carry them
    for (method, task), rows in tokens.groupby(["method", "task_name"], sort=True):
        fig.add_trace(go.Scatter(x=rows["train_tokens_per_step"], y=rows["final"],
                                 mode="markers+text" if labelled else "markers",
                                 name=f"{method} — {task}" if tokens["task_name"].nunique() > 1 else method,
                                 text=[method] * len(rows), textposition="top center",
                                 hovertemplate=f"{method}: %{{y:.1%}} at %{{x:,.0f}} tokens/step<extra></extra>",
                                 marker=dict(size=11, color=color_of(method, names))))
    fig.update_layout(title=title, xaxis_title="training-prompt tokens computed per step (log)",
                      yaxis_title="final test accuracy", **{**_LAYOUT, "hovermode": "closest"})
    fig.update_xaxes(type="log")
    fig.update_yaxes(range=[0, 1], tickformat=".0%")
    return fig
