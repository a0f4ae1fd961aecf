"""The family notebooks: ``notebooks/family_<name>.ipynb`` generated from :mod:`icrl_lib.paper.experiments`, their
parameters (with the ``ICRL_FAMILY_PARAMS`` override that CI uses) and how they show their figures."""
from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from icrl_lib.analysis import plots
from icrl_lib.errors import UserError
from icrl_lib.families.spec import PARAMETER_HELP, PARAMETERS
from icrl_lib.notebook import load_yaml_mapping, merge_parameters, show_in_widget
from icrl_lib.paper.experiments import FAMILIES, family
from icrl_lib.paths import project_root

FAMILY_PARAMS_ENV = "ICRL_FAMILY_PARAMS"  # cpu | paper | ci: which params/families/<family>/<x>.yaml overrides


def parameters(name: str, params: Mapping[str, Any], env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """A family notebook's parameters: the cell's values, overridden by ``params/families/<name>/<x>.yaml`` when
    ``ICRL_FAMILY_PARAMS=x`` is set (``make test`` sets ``ci``); unknown names raise UserError."""
    unknown = sorted(set(params) - set(PARAMETERS))
    missing = sorted(set(PARAMETERS) - set(params))
    if unknown or missing:
        raise UserError(f"parameters cell of family {name}: unknown {unknown}, missing {missing}")
    which = (os.environ if env is None else env).get(FAMILY_PARAMS_ENV, "").strip()
    if not which:
        return dict(params)
    path = project_root() / "params" / "families" / name / f"{which}.yaml"
    if not path.is_file():
        raise UserError(f"{FAMILY_PARAMS_ENV}={which}: no {path}")
    overrides = load_yaml_mapping(path)
    print(f"{FAMILY_PARAMS_ENV}={which}: {path} overrides {sorted(overrides)}")
    return merge_parameters(params, overrides, str(path))


def _annotation(kind: str) -> str:
    return kind if kind in ("list", "dict", "int", "str", "bool", "float") else f'"{kind}"'


def build(name: str):
    """``notebooks/family_<name>.ipynb`` as generated from the family's data (``make family-notebooks`` writes it;
    a test keeps the committed file equal). Thin: every cell is a call into the library."""
    import nbformat

    fam = family(name)
    md, code = nbformat.v4.new_markdown_cell, nbformat.v4.new_code_cell
    params = "\n".join(f"{key}: {_annotation(kind)} = {default!r}  # {help_}"
                       for key, (default, kind, help_) in PARAMETER_HELP.items())
    cells = [
        md(f"# {fam.title}\n\n**The question.** {fam.question}\n\n"
           f"**The paper's finding** ({fam.paper}). {fam.finding}\n\n"
           f"Run it: `make family F={name}` (the embedded model on a CPU, `params/families/{name}/cpu.yaml`), or "
           f"`papermill notebooks/family_{name}.ipynb outputs/family_{name}.ipynb "
           f"-f params/families/{name}/paper.yaml` "
           "(the paper's models and sizes, for GPUs). Runs are resumable run folders: re-executing finishes what is "
           "missing, and every table and figure below works on whatever has finished."),
        code("from icrl_lib import family, notebook\n"
             "from icrl_lib.analysis import aggregate\n"
             "from icrl_lib.families import comparison, family_notebook, report, spec\n"
             "from icrl_lib.sweeps import launchers\n\n"
             "notebook.header()  # the code's revision and versions; figures that survive export\n"
             "_before_parameters = set(globals()) - set(spec.PARAMETERS)"),
        code("# The family's arms and the values it sweeps are data in icrl_lib.paper.experiments; these are sizes "
             f"and places.\n{params}",
             metadata={"tags": ["parameters"]}),
        code(f"params = family_notebook.parameters({name!r}, notebook.new_parameters(globals(), _before_parameters))\n"
             f"fam = family({name!r})\n"
             "sweep, arms = report.family_sweep(fam, params)\n"
             "print(f\"{len(sweep.configs)} runs: {', '.join(report.arm_names(sweep, arms).values())}\")"),
        md("## Runs\nEach run is resumed or skipped when already done; progress lines come while the runs go."),
        code("status = launchers.run_sweep(sweep) if params[\"run\"] else launchers.status(sweep)\n"
             "report.runs_overview(status)  # every run: status[[\"run\", \"state\", \"steps_done\", \"steps\"]]"),
        md("## Verdicts: does this reproduce the paper's findings?\nEach finding is the paper's claim about the "
           "difference between two arms (or an arm and its own step 0), with the paper's margin (where the paper "
           "gives words, the margin column says it is our reading of them). Its 95% interval pairs the arms on the "
           "same test queries and seeds and combines query and seed noise: **supported** when the interval lies "
           "wholly on the claim's side (for \"at most\" and \"at or above\" claims, on the null's side of the "
           "margin), **contradicted** when it lies wholly on the other side, otherwise **inconclusive** (MDE is the "
           "smallest true difference these sizes would detect with 80% power). Not counted: cells with fewer than 3 "
           "seeds (\"inconclusive (1 seed)\"), cells where every arm ended at or below its step 0 or chance "
           "(\"uninformative (at the floor)\"), and cells whose MDE exceeds any possible effect (\"not testable at "
           "this size\"). The first table combines a finding's counted tasks with a Bonferroni correction and shows "
           "what the paper's own numbers say; tasks the paper does not claim a finding for are reported apart."),
        code("tables = report.collect(sweep, arms)\nverdict_table = report.verdict_table(fam, tables, arms, params)\n"
             "report.show_verdicts(fam, verdict_table)"),
        md("## Results\nThe paper's metrics per arm: mean over seeds [95% interval] and n seeds. Accuracies' intervals "
           "combine test-query and seed noise; regret and the collapse columns take a t-interval over seeds only (a "
           "run's training predictions share one context: they are not independent trials), so with one seed, or "
           "seeds that agree, they show the mean alone. The peak selects on the test set: read it next to the final "
           "value. Collapse columns are over the last 50 training predictions (a shorter run says its own)."),
        code("aggregate.metrics_table(tables.aggregated, report.arm_order(arms, tables))"),
        md("## Figures"),
        code("figures = report.figures(fam, tables, arms)\nfamily_notebook.show_figures(figures, tables.curves, "
             "report.references(arms, tables))"),
        md("## Paper vs ours\nOur value next to the paper's for the same method and task at the paper's own "
           "setting (`icrl_lib/data/paper_results.csv`; where the paper never ran the arm's value of a knob, its "
           "default for the method), both settings in full (steps, test queries, window, what differs, seeds) and "
           "whether they are alike: \"differs\" names the steps, window and settings that differ, so a small run is "
           "read knowing how far from the paper's setting it is. \"No paper counterpart\" only where the paper never "
           "ran the method on the task in this family."),
        code("paper_vs_ours = comparison.paper_vs_ours(fam, tables, arms)\n"
             "comparison.paper_vs_ours_view(paper_vs_ours)"),
        md("## Compute\nTraining-prompt tokens computed per step (test queries excluded, as in the paper's table)."),
        code("tokens = report.token_table(tables)\nreport.token_view(tokens)"),
        md("## Export"),
        code("folder = report.export_folder(fam, params)\n"
             "paths = report.export(fam, figures, tables, {\"verdicts\": verdict_table, "
             "\"paper_vs_ours\": paper_vs_ours,\n"
             "                                             \"tokens\": tokens}, folder)\n"
             "for name, path in paths.items():\n    print(f\"{name}: {path}\")\n"
             "assert paths and all(path.stat().st_size > 0 for path in paths.values())"),
    ]
    for i, cell in enumerate(cells):
        cell["id"] = f"{name.replace('_', '-')}-{i}"
    nb = nbformat.v4.new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"}
    return nb


def write_all(folder: str | os.PathLike | None = None) -> list[Path]:
    """Write ``notebooks/family_<name>.ipynb`` for every family; returns the paths."""
    import nbformat

    folder = Path(folder) if folder else project_root() / "notebooks"
    paths = []
    for name in FAMILIES:
        path = folder / f"family_{name}.ipynb"
        nbformat.write(build(name), path)
        paths.append(path)
    return paths


def show_figures(figures: Mapping[str, Any], curves: pd.DataFrame, references=(), panels: int = 6) -> None:
    """Show a family's figures; with more than ``panels`` (model, task) panels, also a model selector (ipywidgets)
    that redraws the test-accuracy figure for one model (the full figure stays above, for exports)."""
    for figure in figures.values():
        figure.show()
    models = sorted(curves["model_name"].unique()) if not curves.empty else []
    if not models or len(models) * curves["task_name"].nunique() <= panels:
        return
    import ipywidgets as widgets
    from IPython.display import display

    choice = widgets.Dropdown(options=models, description="model")
    out = widgets.Output()

    def redraw(*_):
        show_in_widget(out, plots.facet_figure(
            curves[curves["model_name"] == choice.value], "mean", percent=True, references=references,
            title=f"{choice.value}: test accuracy (mean over seeds, 95% interval)", y_title="test accuracy"))

    choice.observe(redraw, names="value")
    redraw()
    display(widgets.VBox([choice, out]))
