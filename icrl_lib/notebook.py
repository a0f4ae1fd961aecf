"""Helpers that keep the notebooks thin: parameter checks and overrides, paths, figure export, widgets.

The experiment notebook's ``parameters`` cell mirrors :class:`~icrl_lib.runs.config.ExperimentConfig` (minus
``hf_token``: tokens come from the ``HF_TOKEN`` environment variable, so they never land in an executed notebook)
plus :data:`NOTEBOOK_ONLY`. A YAML file named by the environment variable ``ICRL_PARAMS_FILE`` (nbval/CI use
``params/ci.yaml``) overrides them after papermill's own parameters.
"""
from __future__ import annotations

import dataclasses
import os
import subprocess
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pandas as pd

from icrl_lib.analysis import plots
from icrl_lib.errors import UserError
from icrl_lib.paper import methods
from icrl_lib.paths import find_file, project_root, resolve_path
from icrl_lib.runs.config import ExperimentConfig, read_yaml_mapping, with_paths_resolved
from icrl_lib.runs.identity import model_label, run_name
from icrl_lib.runs.plan import provenance
from icrl_lib.runs.store import ANALYSIS_DIR, FIGURES_DIR
from icrl_lib.runs.tables import COLLAPSE_WINDOW
from icrl_lib.tasks.task import task_label

PARAMS_FILE_ENV = "ICRL_PARAMS_FILE"
SECRET_FIELDS = ("hf_token",)  # never notebook parameters
# Parameters of notebooks/icrl_experiment.ipynb that are not ExperimentConfig fields, with their defaults.
NOTEBOOK_ONLY = MappingProxyType({"headless": False, "figures_dir": None, "running_window": 50})
NOTEBOOK_ONLY_HELP = MappingProxyType({
    "headless": ("bool", "True under papermill/CI: progress lines instead of a bar"),
    "figures_dir": ("str | None", "None: <run folder>/figures"),
    "running_window": ("int | None", "moving window (steps) of the running training accuracy; None: cumulative")})
EXPERIMENT_NOTEBOOK = "notebooks/icrl_experiment.ipynb"
PARAMETERS_HEAD = (
    "# Every ExperimentConfig field with its default and help (generated from icrl_lib.runs.config: `make "
    "family-notebooks`).\n# No hf_token here on purpose: a hub token comes from the HF_TOKEN environment variable, so "
    "it never lands in an\n# executed notebook.\n")


def experiment_parameter_defaults() -> dict[str, Any]:
    """Every parameter of the experiment notebook with its default: config fields (no secrets) + notebook-only."""
    fields = {f.name: f.default for f in dataclasses.fields(ExperimentConfig) if f.name not in SECRET_FIELDS}
    return {**fields, **NOTEBOOK_ONLY}


def _papermill_type(annotation: str) -> str:
    """A field's annotation as papermill's ``--help-notebook`` shows it: ``int | None`` -> ``"Optional[int]"``."""
    parts = [p.strip() for p in str(annotation).split("|")]
    if "None" in parts and len(parts) == 2:
        return f'"Optional[{next(p for p in parts if p != "None")}]"'
    return parts[0]


def _literal(value: Any) -> str:
    return f'"{value}"' if isinstance(value, str) else repr(value)


def experiment_parameters_source() -> str:
    """The experiment notebook's ``parameters`` cell, generated from :class:`ExperimentConfig`'s fields (type,
    default and help: one place for each fact) and :data:`NOTEBOOK_ONLY`; a test keeps the notebook equal to it."""
    lines = [f"{f.name}: {_papermill_type(f.type)} = {_literal(f.default)}  # {f.metadata['help']}"
             for f in dataclasses.fields(ExperimentConfig) if f.name not in SECRET_FIELDS]
    extra = [f"{name}: {_papermill_type(kind)} = {_literal(NOTEBOOK_ONLY[name])}  # {text}"
             for name, (kind, text) in NOTEBOOK_ONLY_HELP.items()]
    return PARAMETERS_HEAD + "\n".join(lines) + "\n\n# Notebook-only parameters\n" + "\n".join(extra)


def write_experiment_parameters(path: str | os.PathLike | None = None) -> Path:
    """Rewrite the ``parameters`` cell of the experiment notebook from :func:`experiment_parameters_source`."""
    import nbformat

    path = Path(path or project_root() / EXPERIMENT_NOTEBOOK)
    notebook = nbformat.read(path, as_version=4)
    cell = next(c for c in notebook.cells if "parameters" in c.metadata.get("tags", []))
    cell.source = experiment_parameters_source()
    nbformat.write(notebook, path)
    return path


def new_parameters(namespace: Mapping[str, Any], before: set[str]) -> dict[str, Any]:
    """Public names bound in ``namespace`` that were not in ``before`` (the parameters cell's assignments)."""
    return {k: v for k, v in namespace.items() if k not in before and not k.startswith("_")}


def describe_mismatch(names, expected) -> str:
    """Why a parameters cell's names differ from the expected ones (assertion message)."""
    names, expected = set(names), set(expected)
    text = f"parameters cell: unknown {sorted(names - expected)}; missing {sorted(expected - names)}"
    if names & set(SECRET_FIELDS):
        text += "; hf_token must never be a notebook parameter: set the HF_TOKEN environment variable instead"
    return text


def load_yaml_mapping(path: str | os.PathLike) -> dict[str, Any]:
    """A YAML file holding one mapping (``{}`` for an empty file); errors name the file and line."""
    return read_yaml_mapping(path)


def params_file(env: Mapping[str, str] | None = None) -> Path | None:
    """The YAML file named by ``ICRL_PARAMS_FILE`` (relative: to the cwd, else the checkout), or None if unset."""
    value = (os.environ if env is None else env).get(PARAMS_FILE_ENV, "").strip()
    if not value:
        return None
    found = find_file(value)
    if found is None:
        raise FileNotFoundError(f"{PARAMS_FILE_ENV}={value!r}: no such file (looked in the current folder and in "
                                f"{project_root()})")
    return found


def checked_parameters(path: str | os.PathLike, params: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """``params`` (default: the experiment notebook's) overridden by the YAML file ``path`` (see
    :func:`merge_parameters`)."""
    params = experiment_parameter_defaults() if params is None else params
    return merge_parameters(params, load_yaml_mapping(path), str(path))


def merge_parameters(params: Mapping[str, Any], overrides: Mapping[str, Any], source: str) -> dict[str, Any]:
    """``params`` overridden by ``overrides`` (read from ``source``); a key that is not a parameter raises UserError
    naming ``source``, ``hf_token`` included: papermill would write it into the executed notebook."""
    unknown = sorted(set(overrides) - set(params))
    if unknown:
        raise UserError(f"{source}: unknown parameter(s) {unknown}; allowed: {sorted(params)}"
                        + ("; hf_token comes from the HF_TOKEN environment variable, never from a params file "
                           "(papermill would write it into the executed notebook)" if "hf_token" in unknown else ""))
    return {**params, **overrides}


def apply_params_file(params: Mapping[str, Any], env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """``params`` overridden by the YAML file named by ``ICRL_PARAMS_FILE``; unknown keys raise ValueError."""
    path = params_file(env)
    if path is None:
        return dict(params)
    overrides = load_yaml_mapping(path)
    merged = merge_parameters(params, overrides, f"{PARAMS_FILE_ENV}={path}")
    print(f"{PARAMS_FILE_ENV}: {path} overrides {sorted(overrides)}")
    return merged


def experiment_config(params: Mapping[str, Any]):
    """An :class:`ExperimentConfig` from notebook parameters (validated; paths resolved against the checkout)."""
    values = {k: v for k, v in params.items() if k not in NOTEBOOK_ONLY}
    values["output_dir"] = values.get("output_dir") or "outputs"
    return with_paths_resolved(ExperimentConfig.from_dict(values))


def run_figures(steps: pd.DataFrame, tests: pd.DataFrame, running_window: int | None = 50,
                title: str = "") -> dict[str, Any]:
    """The figures of one run: test accuracy, running training accuracy, regret, exploration (distinct labels
    predicted recently), context size/composition."""
    prefix = f"{title}: " if title else ""
    figures = {"test_accuracy": plots.test_accuracy_figure(tests, title=f"{prefix}test accuracy")}
    if "reward" in steps.columns and steps["reward"].notna().any():  # ICL and zero-shot runs have no rewards
        figures["running_accuracy"] = plots.running_accuracy_figure(steps, window=running_window)
        figures["regret"] = plots.regret_figure(steps, title=f"{prefix}cumulative regret")
        figures["collapse"] = plots.collapse_figure(steps, title=f"{prefix}labels predicted in the last "
                                                    f"{COLLAPSE_WINDOW} training steps")
    figures["context"] = plots.context_figure(steps, title=f"{prefix}context")
    return figures


def save_figures(figures: Mapping[str, Any], folder: str | os.PathLike) -> dict[str, Path]:
    """Write every figure as ``<folder>/<name>.html`` (standalone, opens offline); returns name -> path."""
    folder = resolve_path(folder)
    return {name: plots.save_html(fig, folder / f"{name}.html") for name, fig in figures.items()}


def print_summary(params: str | os.PathLike, executed_notebook: str | os.PathLike | None = None) -> Path:
    """Print where a params file's run lives (from the library: its config's run folder) and its figure files."""
    values = checked_parameters(params)
    config = experiment_config(values)
    run_dir = Path(config.output_dir) / run_name(config)
    if executed_notebook is not None:
        print(f"executed notebook: {executed_notebook}")
    print(f"run folder: {run_dir}")
    figures = resolve_path(values["figures_dir"]) if values.get("figures_dir") else run_dir / FIGURES_DIR
    for path in sorted(figures.glob("*.html")):
        print(f"figure {path.stem}: {path}")
    return run_dir


def runs_dir(outputs_dir: str | os.PathLike | None = None) -> Path:
    """Folder whose sub-folders are runs: ``outputs_dir``; if None, the ``output_dir`` of the experiment parameters
    named by ``ICRL_PARAMS_FILE`` (so under CI the analysis notebooks read the CI run), else ``outputs``."""
    if outputs_dir is None:
        path = params_file()
        outputs_dir = (load_yaml_mapping(path).get("output_dir") if path else None) or "outputs"
    return resolve_path(outputs_dir)


def analysis_dir(outputs_dir: str | os.PathLike | None = None, export_dir: str | os.PathLike | None = None) -> Path:
    """Where analysis notebooks write: ``export_dir``, else ``<runs_dir(outputs_dir)>/_analysis`` (never a run)."""
    return resolve_path(export_dir) if export_dir else runs_dir(outputs_dir) / ANALYSIS_DIR


def export_table(table: pd.DataFrame, folder: str | os.PathLike, name: str) -> dict[str, Path]:
    """Write ``table`` as ``<folder>/<name>.parquet`` and ``.csv``; returns format -> path."""
    folder = resolve_path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"parquet": folder / f"{name}.parquet", "csv": folder / f"{name}.csv"}
    table.to_parquet(paths["parquet"], index=False)
    table.to_csv(paths["csv"], index=False)
    return paths


def export_comparison_figures(runs: pd.DataFrame, steps: pd.DataFrame, folder: str | os.PathLike) -> dict[str, Path]:
    """Main comparison per (model, task) and the regret bars as standalone HTML; name -> path ({} if no runs)."""
    figures = {}
    if not runs.empty:
        for (model, task), _ in runs.groupby(["model_name", "task_name"], sort=True):
            name = f"comparison__{task_label(task)}__{model_label(str(model))}"
            figures[name] = plots.main_comparison_figure(runs, task=task, model=model)
    if not steps.empty and "regret" in steps.columns and steps["regret"].notna().any():
        figures["regret_bars"] = plots.regret_bar_figure(steps)
    return save_figures(figures, folder)


KERNEL_METADATA = ("language_info",)  # notebook metadata a kernel writes on opening; never saved, never committed


def jupyter_pre_save_hook(model: dict, **_: Any) -> None:
    """Jupyter server pre-save hook (``make lab`` installs it): drop what a kernel adds to a notebook's metadata on
    opening, so looking at a tracked notebook leaves its file, and ``git status``, unchanged. Outputs are kept in
    the working file (git's nbstripout filter keeps them out of commits)."""
    if model.get("type") == "notebook" and isinstance(model.get("content"), dict):
        for key in KERNEL_METADATA:
            model["content"].get("metadata", {}).pop(key, None)


def jupyter_post_save_hook(model: dict, os_path: str, contents_manager: Any = None, **_: Any) -> None:
    """A Jupyter post-save hook (``make lab`` installs it): after a notebook is saved with outputs, git sees a file of
    another size and reports it modified without asking the nbstripout filter, though ``git diff`` is empty. When the
    filtered content equals git's index, ``git add`` only refreshes the index entry's size and time (the same blob),
    so ``git status`` stays clean; a notebook with real changes is left as it is."""
    if model.get("type") != "notebook":
        return
    path = Path(os_path)
    try:
        unchanged = subprocess.run(["git", "diff", "--quiet", "--", path.name], cwd=path.parent, timeout=30,
                                   capture_output=True).returncode == 0
        tracked = subprocess.run(["git", "ls-files", "--error-unmatch", path.name], cwd=path.parent, timeout=30,
                                 capture_output=True).returncode == 0
        if unchanged and tracked:
            subprocess.run(["git", "add", "--", path.name], cwd=path.parent, timeout=30, capture_output=True)
    except (OSError, subprocess.SubprocessError):
        pass  # not a git checkout, or no git: nothing to keep clean


def comparison_browser(runs: pd.DataFrame):
    """ipywidgets: model and task dropdowns, one checkbox per run name of that model and task, and "all" / "none",
    redrawing the main comparison. At first one name per paper method is drawn (:func:`default_shown`): with every
    family's variants the figure would be a tangle of overlapping bands. The checkboxes wrap onto as many rows as they
    need (every one stays on screen at any width), each as wide as its name."""
    import ipywidgets as widgets

    model = widgets.Dropdown(options=sorted(runs["model_name"].unique()), description="model")
    task = widgets.Dropdown(options=sorted(runs["task_name"].unique()), description="task")
    every, none = widgets.Button(description="all"), widgets.Button(description="none")
    wrapped = widgets.Box(layout=widgets.Layout(display="flex", flex_flow="row wrap", width="100%"))
    out = widgets.Output(layout=widgets.Layout(width="100%"))
    held = [False]  # while several boxes change at once: one redraw at the end

    def rows() -> pd.DataFrame:
        return runs[(runs["model_name"] == model.value) & (runs["task_name"] == task.value)]

    def redraw(*_):
        if held[0]:
            return
        chosen = [box.description for box in wrapped.children if box.value]
        shown = rows()
        show_in_widget(out, f"no runs of {task.value} with {model.value}" if shown.empty else
                       plots.main_comparison_figure(shown, task=task.value, model=model.value, methods=chosen))

    def rebuild(*_):
        names = methods.method_order(rows()["method"].unique().tolist())
        first = default_shown(names)
        boxes = [widgets.Checkbox(value=name in first, description=name, indent=False,
                                  layout=widgets.Layout(width="max-content", margin="0 16px 0 0")) for name in names]
        for box in boxes:
            box.observe(redraw, names="value")
        wrapped.children = boxes
        redraw()

    def set_all(value: bool):
        held[0] = True
        for box in wrapped.children:
            box.value = value
        held[0] = False
        redraw()

    every.on_click(lambda _: set_all(True))
    none.on_click(lambda _: set_all(False))
    model.observe(rebuild, names="value")
    task.observe(rebuild, names="value")
    rebuild()
    return widgets.VBox([widgets.HBox([model, task, every, none]), wrapped, out], layout=widgets.Layout(width="100%"))


def default_shown(names: list[str]) -> set[str]:
    """The run names a comparison draws at first: for each paper method, its name with the fewest settings (the
    shortest); all of them when no name belongs to a paper method."""
    first: dict[str, str] = {}
    for name in sorted(names, key=lambda n: (len(n), n)):
        method = methods.base_method(name)
        if method is not None:
            first.setdefault(method.display, name)
    return set(first.values()) or set(names)


def show_in_widget(out, content) -> None:
    """Replace what the ipywidgets ``Output`` ``out`` shows with ``content``: a plotly figure (as the plotly mimetype
    only) or a line of text. The outputs are set as the widget's state, not captured with ``with out:`` and
    ``clear_output``: under nbclient (papermill, nbval) captured output could leave a cell waiting forever, so a
    headless run hung; widget contents are not exported anyway, the figures shown outside widgets are."""
    import plotly.io as pio

    if isinstance(content, str):
        out.outputs = ({"output_type": "stream", "name": "stdout", "text": content + "\n"},)
        return
    bundle = pio.renderers["plotly_mimetype"].to_mimebundle(content.to_dict())
    out.outputs = ({"output_type": "display_data", "data": bundle, "metadata": {}},)


def header(static: bool | None = None) -> str:
    """The top of every notebook: print where the code came from (revision, local changes, versions) and set up
    figures that survive export (:func:`setup_figures`); returns the renderer."""
    print(provenance().line())
    return setup_figures(static)


def setup_figures(static: bool | None = None) -> str:
    """Plotly output that survives export: each figure carries the plotly JSON (JupyterLab) and HTML, with
    plotly.js embedded once per notebook (nbconvert HTML, nbviewer), so an executed notebook shows its figures.

    ``static`` adds a PNG copy of each figure, which GitHub's notebook view (no JavaScript) shows: None = when
    kaleido (``pip install -e ".[static]"``) and a Chrome/Chromium are there. Returns the renderer set."""
    import plotly.io as pio

    renderer = "plotly_mimetype+notebook"
    if static is None:
        static = _static_images_work()
    if static:
        renderer += "+png"
    pio.renderers.default = renderer
    return renderer


def _static_images_work() -> bool:
    """Whether kaleido can render a PNG here (it needs a Chrome/Chromium: $BROWSER_PATH, or found on PATH)."""
    import importlib.util
    import shutil

    if importlib.util.find_spec("kaleido") is None:
        return False
    if not os.environ.get("BROWSER_PATH"):
        found = next((shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)),
                     None)
        if found is None:
            return False
        os.environ["BROWSER_PATH"] = found
    try:
        import plotly.graph_objects as go
        import plotly.io as pio

        pio.to_image(go.Figure(), format="png", width=10, height=10)
        return True
    except Exception:  # noqa: BLE001 - any failure of the optional PNG path just leaves it out
        return False
