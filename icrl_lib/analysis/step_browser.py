"""The step inspector in JupyterLab: pick a run, a step and a query; see the context the model saw, coloured by reward,
what changed since the previous step, the prompt, and (on request) the label distribution the prediction was drawn
from.

The widget only arranges :class:`~icrl_lib.runs.inspector.StepInspector` views; the page itself is
:func:`step_html`, plain HTML that a headless run or a test can read. The run folder is read without its lock, so a
run that is still going can be browsed: "reload" reads the steps logged since.
"""
from __future__ import annotations

import html
import os
from pathlib import Path
from typing import Any

from icrl_lib.paper.methods import name_run
from icrl_lib.paths import resolve_path
from icrl_lib.runs.config import load_config
from icrl_lib.runs.identity import model_label
from icrl_lib.runs.inspector import ContextEpisode, StepInspector, StepView
from icrl_lib.runs.store import CONFIG_FILE

REWARD_COLOURS = {1: "#d8f0d8", 0: "#f8d8d8", None: "#ececec"}  # rewarded, not rewarded, gold (ICL, exemplars)
MAX_INPUT_CHARS = 160  # an episode's input in the list; the whole prompt is below it


def run_folders(outputs_dir: str | os.PathLike) -> list[Path]:
    """The run folders under ``outputs_dir`` (each has its config file), newest first."""
    root = Path(outputs_dir)
    found = [p for p in root.iterdir() if (p / CONFIG_FILE).is_file()] if root.is_dir() else []
    return sorted(found, key=lambda p: (p / CONFIG_FILE).stat().st_mtime, reverse=True)


def run_label(folder: Path) -> str:
    """How the run picker shows a run folder: task, the run's name (paper.methods.name_run), model and seed."""
    config = load_config(folder / CONFIG_FILE)
    return (f"{config.task_name} · {name_run(config.to_dict())} · {model_label(config.model_name)} · seed "
            f"{config.seed} ({folder.name[-8:]})")


def last_step(outputs_dir: str | os.PathLike, run: str | os.PathLike | None = None) -> StepView | None:
    """The last logged step of ``run`` (a path, relative ones to the checkout), else of the newest run under
    ``outputs_dir``; None when there is no run or no logged step yet."""
    folders = run_folders(outputs_dir)
    folder = resolve_path(run) if run else (folders[0] if folders else None)
    if folder is None:
        return None
    inspector = StepInspector.open(folder)
    return inspector.view(len(inspector.records) - 1) if inspector.records else None


def _episode_html(e: ContextEpisode, added: set[int]) -> str:
    text = e.input if len(e.input) <= MAX_INPUT_CHARS else e.input[:MAX_INPUT_CHARS] + "…"
    if e.index is None:
        what, tag = f"gold '{e.answer}'", "exemplar"
    elif e.prediction is None:
        what, tag = f"gold '{e.answer}'", f"step {e.index}"
    else:
        shown = f", shown {e.feedback}" + (" (flipped)" if e.flipped else "") if e.feedback is not None else ""
        what = f"predicted '{e.prediction}' (gold '{e.answer}'), reward {e.reward}{shown}"
        tag = f"step {e.index}"
    new = " <b>new</b>" if e.index is not None and e.index in added else ""
    return (f'<div style="background:{REWARD_COLOURS[e.reward]};padding:2px 6px;margin:1px 0;font-family:monospace;'
            f'font-size:12px">[{html.escape(tag)}]{new} {html.escape(text)} → {html.escape(what)}</div>')


def step_html(view: StepView) -> str:
    """One step as HTML: the call, the context's diff and episodes (coloured by reward) and the prompt."""
    where = "training query" if view.kind == "train" else f"test query {view.query} of {view.queries}"
    lines = [f"<h4>{html.escape(view.method)} — step {view.step} of {view.steps_logged} logged, {where}</h4>"]
    if view.model_call:
        outcome = (f"prediction <b>{html.escape(str(view.prediction))}</b>, gold <b>{html.escape(view.answer)}</b>, "
                   f"reward {view.reward}")
        if view.flipped:
            outcome += f" (shown as {view.feedback}: flipped)"
        lines.append(f"<p>{outcome}; temperature {view.temperature:g}, seed {view.seed}"
                     + (f", {view.token_count} prompt tokens" if view.token_count is not None else "") + "</p>")
        if view.feedback_text:
            lines.append(f"<p>feedback later contexts show: <i>{html.escape(view.feedback_text)}</i></p>")
    else:
        lines.append(f"<p>no model call: ICL shows the gold label <b>{html.escape(view.answer)}</b></p>")
    if view.context_index is not None:
        lines.append(f"<p>context {view.context_index} of {len(view.context_lengths or ())} (lengths "
                     f"{', '.join(map(str, view.context_lengths or ()))})</p>")
    diff = (f"added {', '.join(map(str, view.added)) or 'none'}; dropped {', '.join(map(str, view.dropped)) or 'none'}"
            if view.step else "the first step")
    kept = sum(1 for e in view.episodes if e.index is not None)
    lines.append(f"<p>context: {kept} episode(s) + {len(view.episodes) - kept} exemplar(s); since the previous step: "
                 f"{diff}</p>")
    added = set(view.added)
    lines += [_episode_html(e, added) for e in view.episodes] or ["<p><i>empty context</i></p>"]
    if view.prompt is not None:
        lines.append(f"<details><summary>the exact prompt ({view.token_count or '?'} tokens)</summary><pre "
                     f'style="white-space:pre-wrap;font-size:11px">{html.escape(view.prompt)}</pre></details>')
    return "\n".join(lines)


def step_browser(outputs_dir: str | os.PathLike, run: str | os.PathLike | None = None, lm: Any = None):
    """A widget over the runs under ``outputs_dir``: run picker, step slider, query picker, reload, and a label
    distribution on request (``lm``: a loaded model to score with; else the run's model is loaded once)."""
    import ipywidgets as widgets
    from IPython.display import display

    from icrl_lib.analysis.plots import label_distribution_figure
    from icrl_lib.runs.inspector import with_probabilities

    folders = run_folders(outputs_dir)
    runs = widgets.Dropdown(options=[(run_label(p), str(p)) for p in folders], description="run",
                            value=str(run) if run else (str(folders[0]) if folders else None),
                            layout=widgets.Layout(width="95%"))
    step = widgets.IntSlider(min=0, max=0, description="step", continuous_update=False,
                             layout=widgets.Layout(width="95%"))
    query = widgets.Dropdown(description="query", layout=widgets.Layout(width="60%"))
    probs = widgets.Checkbox(description="label distribution (loads the model)", value=False)
    reload = widgets.Button(description="reload", tooltip="read the steps logged since (a run that is still going)")
    page, figure = widgets.HTML(), widgets.Output()
    state: dict[str, Any] = {"inspector": None, "lm": lm, "quiet": False}

    def open_run(*_: Any) -> None:
        if not runs.value:
            page.value = f"<p>No run folder under {html.escape(str(outputs_dir))} yet.</p>"
            return
        state["inspector"] = inspector = StepInspector.open(runs.value)
        n = len(inspector.records)
        step.max = max(n - 1, 0)
        if step.value > step.max:
            step.value = step.max
        update_queries()
        show()

    def update_queries(*_: Any) -> None:
        inspector = state["inspector"]
        rec = inspector.records[step.value] if inspector and inspector.records else None
        options = [("training query", -1)] if rec is not None and rec.train is not None else []
        if rec is not None and rec.test is not None:
            options += [(f"test query {i}: {rec.test.predictions[i]} (gold {rec.test.answers[i]})", i)
                        for i in range(len(rec.test.predictions))]
        state["quiet"] = True  # new options fire the query's observer: draw once, after
        try:
            query.options = options
            query.value = options[0][1] if options else None
        finally:
            state["quiet"] = False

    def show(*_: Any) -> None:
        inspector = state["inspector"]
        if state["quiet"]:
            return
        figure.clear_output()
        if inspector is None or not inspector.records or query.value is None:
            page.value = "<p>No step logged yet: reload once the run has made one.</p>"
            return
        view = inspector.view(step.value, None if query.value == -1 else query.value)
        page.value = step_html(view)
        if probs.value and view.model_call and view.token_ids is not None:
            if state["lm"] is None:
                from icrl_lib.engine.models import load_model, resolve_model

                c = inspector.plan.config
                state["lm"] = load_model(c.model_name, c.device, c.trust_remote_code, c.hf_token,
                                         source=resolve_model(c.model_name, c.hf_token), facts=inspector.plan.model,
                                         yarn_factor=c.yarn_factor)
            with figure:
                label_distribution_figure(with_probabilities(view, inspector.plan, state["lm"])).show()

    runs.observe(open_run, "value")
    step.observe(lambda *_: (update_queries(), show()), "value")
    query.observe(show, "value")
    probs.observe(show, "value")
    reload.on_click(open_run)
    open_run()
    box = widgets.VBox([runs, widgets.HBox([step, reload]), widgets.HBox([query, probs]), figure, page])
    display(box)
    return box
