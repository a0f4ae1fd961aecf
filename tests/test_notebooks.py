"""Notebooks, params/ and the notebook helpers: committed state, parameter mirroring, a real papermill run."""
from __future__ import annotations

import ast
import dataclasses
import importlib.util
import json
import shutil
import subprocess
import sys
import time
import typing
from pathlib import Path

import nbformat
import pandas as pd
import pytest
import yaml

from icrl_lib import notebook
from icrl_lib.engine.embedded import DEFAULT_MODEL
from icrl_lib.paper.experiments import FAMILIES
from icrl_lib.runs.config import ExperimentConfig, load_config
from icrl_lib.runs.identity import model_label
from icrl_lib.tasks.task import load_task

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
PARAM_FILES = sorted(  # run configs; sweeps, family params and task files have their own tests
    p for p in (ROOT / "params").rglob("*.yaml") if not {"sweeps", "families", "tasks"} & set(p.parts))
EXPERIMENT = ROOT / "notebooks" / "icrl_experiment.ipynb"


def parameters_cell(path: Path) -> str:
    cells = [c for c in nbformat.read(path, as_version=4).cells if "parameters" in c.metadata.get("tags", [])]
    assert len(cells) == 1, f"{path.name}: expected exactly one cell tagged 'parameters'"
    return cells[0].source


def test_the_notebooks_exist():
    families = [f"family_{name}.ipynb" for name in FAMILIES]
    assert [p.name for p in NOTEBOOKS] == sorted(families + ["icrl_experiment.ipynb", "max_context_examples.ipynb",
                                                             "results.ipynb", "step_inspector.ipynb",
                                                             "token_usage.ipynb"])


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_outputs_are_not_committed(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{path.name} cell {i}: run `make strip`"
    assert "widgets" not in nb.metadata and "papermill" not in nb.metadata
    parameters_cell(path)  # every notebook is papermill-ready


def cell_parameters(path: Path) -> dict[str, tuple[str, object]]:
    """name -> (annotation, literal default) of every assignment in a parameters cell; each must be annotated."""
    out = {}
    for node in ast.parse(parameters_cell(path)).body:
        assert isinstance(node, ast.AnnAssign) and node.value is not None, ast.dump(node)
        annotation = (node.annotation.value if isinstance(node.annotation, ast.Constant)
                      else ast.unparse(node.annotation))
        out[node.target.id] = (annotation, ast.literal_eval(node.value))
    return out


def type_name(annotation) -> str:
    """A dataclass field's type as the parameters cell writes it (``Optional[X]`` quoted: papermill reads no ``|``)."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    return f"Optional[{args[0].__name__}]" if args else annotation.__name__


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_papermill_help_lists_every_parameter_with_its_type(path):
    """``papermill --help-notebook`` must see every parameter: a second '=' on a line (e.g. in a comment) hides it."""
    import papermill

    inferred = papermill.inspect_notebook(str(path))
    declared = cell_parameters(path)
    assert list(inferred) == list(declared)
    assert {k: v["inferred_type_name"] for k, v in inferred.items()} == {k: a for k, (a, _) in declared.items()}
    assert all(v["help"] for v in inferred.values()), "every parameter has a help comment"


def test_parameters_cell_mirrors_the_dataclass():
    declared = cell_parameters(EXPERIMENT)
    assigned = {name: default for name, (_, default) in declared.items()}
    hints = typing.get_type_hints(ExperimentConfig)
    assert all(declared[f.name][0] == type_name(hints[f.name]) for f in dataclasses.fields(ExperimentConfig)
               if f.name in declared)
    fields = {f.name: f.default for f in dataclasses.fields(ExperimentConfig)}
    assert "hf_token" in fields and "hf_token" not in assigned  # tokens only via HF_TOKEN
    expected = {k: v for k, v in fields.items() if k != "hf_token"} | {"headless": False, "figures_dir": None,
                                                                         "running_window": 50}
    assert list(assigned) == list(expected)  # same names, dataclass order
    assert assigned == expected  # same defaults
    assert notebook.experiment_parameter_defaults() == expected


@pytest.mark.parametrize("path", PARAM_FILES, ids=lambda p: str(p.relative_to(ROOT / "params")))
def test_every_params_yaml_is_a_valid_config(path):
    config = load_config(path)  # validates; loads no data and no model
    assert isinstance(config, ExperimentConfig)
    raw = yaml.safe_load(path.read_text())
    assert "hf_token" not in raw
    assert {k: getattr(config, k) for k in raw} == raw


def test_grid_files_are_exactly_what_make_grid_writes(tmp_path):
    spec = importlib.util.spec_from_file_location("make_grid", ROOT / "params" / "make_grid.py")
    make_grid = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_grid)
    written = make_grid.write_grid(tmp_path / "params" / "grid")
    committed = sorted((ROOT / "params" / "grid").rglob("*.yaml"))
    assert len(written) == len(committed) == 40  # 2 models x 4 methods x 5 tasks
    for path in committed:
        fresh = tmp_path / "params" / "grid" / path.relative_to(ROOT / "params" / "grid")
        assert fresh.read_text() == path.read_text(), f"{path}: rerun python params/make_grid.py"
        assert path.read_text().startswith("# Generated by params/make_grid.py")


def test_grid_values_match_the_papers_readme():
    def cfg(model, name):
        return yaml.safe_load((ROOT / "params" / "grid" / model / f"{name}.yaml").read_text())

    approx = cfg("llama-3.1-8b-instruct", "approximate_banking77")
    assert (approx["context_strategy_name"], approx["max_contexts"], approx["approximate_context_sampling_method"],
            approx["context_p_keep"], approx["train_k"]) == ("approximate_only_positive", 8, "uniform", 0.1, 10000)
    icl = cfg("phi-3.5-mini-instruct", "icl_trec_fine")
    assert (icl["icrl"], icl["context_strategy_name"], icl["context_p_keep"], icl["train_k"]) == (
        False, "random_unbiased", 1.0, 5000)
    assert cfg("phi-3.5-mini-instruct", "naive_clinic150")["test_k"] is None  # README command omits --test_k
    assert cfg("phi-3.5-mini-instruct", "naive_nlu")["test_k"] == 500


def test_apply_params_file(tmp_path):
    params = {"train_k": 10, "headless": False}
    good = tmp_path / "p.yaml"
    good.write_text("train_k: 3\n")
    assert notebook.apply_params_file(params, env={}) == params
    assert notebook.apply_params_file(params, env={"ICRL_PARAMS_FILE": str(good)}) == {"train_k": 3,
                                                                                      "headless": False}
    bad = tmp_path / "bad.yaml"
    bad.write_text("hf_token: x\ntrian_k: 3\n")
    with pytest.raises(ValueError, match=r"unknown parameter\(s\) \['hf_token', 'trian_k'\].*HF_TOKEN"):
        notebook.apply_params_file(params, env={"ICRL_PARAMS_FILE": str(bad)})
    with pytest.raises(FileNotFoundError, match="ICRL_PARAMS_FILE"):
        notebook.apply_params_file(params, env={"ICRL_PARAMS_FILE": str(tmp_path / "missing.yaml")})


def test_params_file_relative_to_the_checkout(monkeypatch, tmp_path):
    monkeypatch.chdir(ROOT / "notebooks")  # where nbval and JupyterLab start kernels
    assert notebook.params_file({"ICRL_PARAMS_FILE": "params/ci.yaml"}) == ROOT / "params" / "ci.yaml"
    assert notebook.resolve_path("outputs") == ROOT / "outputs"
    assert notebook.resolve_path(tmp_path) == tmp_path


def test_analysis_notebooks_read_the_runs_of_the_params_file(monkeypatch, tmp_path):
    """Under CI (ICRL_PARAMS_FILE=params/ci.yaml) results.ipynb and token_usage.ipynb read the CI run's folder."""
    monkeypatch.delenv("ICRL_PARAMS_FILE", raising=False)
    assert notebook.runs_dir() == ROOT / "outputs"
    assert notebook.analysis_dir() == ROOT / "outputs" / "_analysis"
    monkeypatch.setenv("ICRL_PARAMS_FILE", "params/ci.yaml")
    assert notebook.runs_dir() == ROOT / "outputs" / "_ci"
    assert notebook.analysis_dir(export_dir=tmp_path) == tmp_path
    assert notebook.runs_dir(tmp_path) == tmp_path  # an explicit folder wins


def test_new_parameters_and_mismatch_message():
    before = {"In", "notebook"}
    names = notebook.new_parameters({"In": 1, "notebook": 2, "_x": 3, "a": 4, "hf_token": 5}, before)
    assert names == {"a": 4, "hf_token": 5}
    message = notebook.describe_mismatch(names, {"a", "b"})
    assert "unknown ['hf_token']" in message and "missing ['b']" in message and "HF_TOKEN" in message


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_opening_a_notebook_in_jupyter_leaves_git_clean_and_outputs_never_reach_git(tmp_path):
    """A real Jupyter server with `make lab`'s hooks saves what JupyterLab sends after opening a notebook (the
    kernel's language_info added): the file stays byte-identical. Saving outputs (Run All, then save) changes the
    file, but the nbstripout filter `make setup` installs keeps them out of diffs and commits, and `git status`
    stays clean."""
    import urllib.request

    repo = tmp_path / "repo"
    shutil.copytree(ROOT / "notebooks", repo / "notebooks", ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    for name in (".gitattributes", ".gitignore"):
        shutil.copy(ROOT / name, repo)

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True).stdout

    git("init", "-q")
    subprocess.run(["make", "-s", "-f", str(ROOT / "Makefile"), "git-filter", f"VENV={ROOT / '.venv'}"], cwd=repo,
                   check=True)
    git("add", "-A")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "notebooks")
    hooks = next(line.split(":=", 1)[1].strip() for line in (ROOT / "Makefile").read_text().splitlines()
                 if line.startswith("JUPYTER_HOOKS :=")).split()
    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "jupyter", "server", "--no-browser", f"--port={port}",
                               "--IdentityProvider.token=t", f"--ServerApp.root_dir={repo}", *hooks, "--allow-root"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/api/contents/notebooks/results.ipynb"

    def call(method: str, body: dict | None = None) -> dict:
        request = urllib.request.Request(url + ("?content=1" if method == "GET" else ""), method=method,
                                         data=json.dumps(body).encode() if body else None,
                                         headers={"Authorization": "token t", "Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=120) as response:  # a loaded 2-core machine: seconds
            return json.loads(response.read())

    try:
        deadline = time.time() + 60
        while True:
            try:
                model = call("GET")
                break
            except OSError:
                assert time.time() < deadline and server.poll() is None, "jupyter server did not start"
                time.sleep(0.3)
        before = (repo / "notebooks" / "results.ipynb").read_bytes()
        content = model["content"]
        # JupyterLab marks a notebook modified when the kernel's language_info differs from the served one (closing
        # it untouched asked "Save your work?"): the server serves exactly what a real kernel reports.
        assert content["metadata"]["language_info"] == _kernel_language_info()
        call("PUT", {"type": "notebook", "format": "json", "content": content})
        assert (repo / "notebooks" / "results.ipynb").read_bytes() == before
        assert git("status", "--porcelain") == ""
        code = next(c for c in content["cells"] if c["cell_type"] == "code")
        code["outputs"] = [{"output_type": "stream", "name": "stdout", "text": "ran\n" * 50000}]  # a 5 MB Run All
        code["execution_count"] = 7
        call("PUT", {"type": "notebook", "format": "json", "content": content})
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert b"ran" in (repo / "notebooks" / "results.ipynb").read_bytes()  # the user keeps the outputs
    # The file grew, and git reports a file whose size changed without consulting the filter: the post-save hook
    # refreshes git's index entry when the filtered content is unchanged, so `git status` stays clean.
    assert git("status", "--porcelain") == ""
    assert git("diff") == ""
    git("add", "-A")
    assert git("diff", "--cached") == ""  # nothing of it would be committed


def _kernel_language_info() -> dict:
    """The language_info a python3 kernel started here reports (what JupyterLab writes into an opened notebook)."""
    from jupyter_client.manager import start_new_kernel

    manager, client = start_new_kernel(kernel_name="python3")
    try:
        return client.kernel_info(reply=True, timeout=60)["content"]["language_info"]
    finally:
        client.stop_channels()
        manager.shutdown_kernel(now=True)


def _execute(output: Path, parameters: dict, source: Path = EXPERIMENT) -> None:
    import papermill

    papermill.execute_notebook(str(source), str(output), parameters=parameters, kernel_name="python3",
                               cwd=str(ROOT / "notebooks"), progress_bar=False, execution_timeout=600)


def test_a_figure_inside_a_widget_does_not_hang_headless_execution(tmp_path):
    """The browsers redraw figures inside an ipywidgets Output; with the export renderer (plotly.js HTML) that
    never completed under nbclient, so papermill (and CI under nbval) waited forever."""
    import nbformat
    import papermill

    code = (
        "import ipywidgets as widgets, plotly.graph_objects as go\n"
        "from IPython.display import display\n"
        "from icrl_lib import notebook\n"
        "notebook.setup_figures(static=False)\n"
        "out = widgets.Output()\n"
        "notebook.show_in_widget(out, go.Figure(go.Scatter(y=[1, 2])))\n"
        "display(out)\n"
        "notebook.show_in_widget(out, go.Figure(go.Scatter(y=[2, 1])))  # a redraw, as a widget's callback does\n"
        "go.Figure(go.Bar(y=[3])).show()\n"
    )
    source = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(code)])
    source.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(source, tmp_path / "in.ipynb")
    papermill.execute_notebook(str(tmp_path / "in.ipynb"), str(tmp_path / "out.ipynb"), kernel_name="python3",
                               progress_bar=False, execution_timeout=120)
    cell = nbformat.read(tmp_path / "out.ipynb", as_version=4).cells[0]
    # nbclient gives up on a hung cell at the timeout without raising: the cell must finish well before it.
    assert cell.metadata.papermill.duration < 100
    outputs = cell.outputs
    assert any("application/vnd.plotly.v1+json" in o.get("data", {}) for o in outputs)  # the figure outside
    state = next(iter(nbformat.read(tmp_path / "out.ipynb", as_version=4).metadata.widgets.values()))["state"]
    shown = [m["state"]["outputs"] for m in state.values() if m["model_name"] == "OutputModel"]
    assert shown and shown[0][0]["data"]["application/vnd.plotly.v1+json"]["data"][0]["y"] == [2, 1]


@pytest.mark.model
def test_papermill_runs_the_experiment_notebook_end_to_end(tmp_path, monkeypatch):
    """The experiment notebook under papermill on the real embedded model (nbval runs it on the tiny one), with
    task_name a path relative to the checkout (the kernel starts in notebooks/, the file is still found); no token
    reaches a file; re-execution resumes; then the analysis notebooks on its one run."""
    monkeypatch.delenv("ICRL_PARAMS_FILE", raising=False)  # parameters come from papermill here
    monkeypatch.setenv("HF_TOKEN", "hf_sentinel_must_not_leak")
    ci = yaml.safe_load((ROOT / "params" / "ci.yaml").read_text())
    parameters = {**ci, "model_name": DEFAULT_MODEL, "task_name": "params/tasks/support_tickets/task.yaml_top3",
                  "output_dir": str(tmp_path / "outputs"), "headless": True}
    _execute(tmp_path / "executed.ipynb", parameters)

    runs = [p for p in (tmp_path / "outputs").iterdir() if (p / "config.yaml").is_file()]
    assert len(runs) == 1
    run = runs[0]
    assert run.name.startswith("support_tickets_top3__")
    steps = (run / "steps.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in steps] == list(range(ci["train_k"]))
    top3 = set(load_task(parameters["task_name"]).labels)
    assert len(top3) == 3 and {json.loads(line)["train"]["answer"] for line in steps} <= top3
    assert list((run / "tables").glob("*.parquet"))
    figures = sorted(p.name for p in (run / "figures").glob("*.html"))
    assert figures == ["collapse.html", "context.html", "regret.html", "running_accuracy.html", "test_accuracy.html"]
    executed = (tmp_path / "executed.ipynb").read_text()
    assert f"run folder: {run}" in executed and "figure test_accuracy: " in executed
    assert "(commit " in executed and "transformers " in executed  # the code's revision and versions, on top
    for path in [tmp_path / "executed.ipynb", *run.rglob("*")]:
        if path.is_file() and path.suffix != ".parquet":
            assert "hf_sentinel_must_not_leak" not in path.read_text(errors="replace"), path

    _execute(tmp_path / "again.ipynb", parameters)  # re-execution resumes: nothing appended
    assert (run / "steps.jsonl").read_text().splitlines() == steps

    # The analysis notebooks on exactly one run: they export their figures and tables.
    outputs = {"outputs_dir": str(tmp_path / "outputs")}
    _execute(tmp_path / "results.ipynb", outputs, ROOT / "notebooks" / "results.ipynb")
    exported = sorted(p.name for p in (tmp_path / "outputs" / "_analysis" / "figures").glob("*.html"))
    assert exported == [f"comparison__support_tickets_top3__{model_label(DEFAULT_MODEL)}.html", "regret_bars.html"]
    _execute(tmp_path / "tokens.ipynb", outputs, ROOT / "notebooks" / "token_usage.ipynb")
    usage = pd.read_parquet(tmp_path / "outputs" / "_analysis" / "token_usage.parquet")
    totals = [json.loads(line)["tokens"] for line in steps]
    assert usage["prompt_tokens"].tolist() == [sum(t["prompt"] for t in totals)]
    assert usage["computed_tokens"].tolist() == [sum(t["computed"] for t in totals)]
    train = [json.loads(line)["train_tokens"]["computed"] for line in steps]  # the paper's compute: training prompts
    assert usage["train_computed_tokens"].tolist() == [sum(train)]
    assert usage["test_computed_tokens"].tolist() == [sum(t["computed"] for t in totals) - sum(train)]


def test_analysis_notebooks_with_no_runs(tmp_path):
    """results.ipynb and token_usage.ipynb say there is nothing yet instead of failing."""
    for name in ("results.ipynb", "token_usage.ipynb"):
        _execute(tmp_path / name, {"outputs_dir": str(tmp_path / "empty")}, ROOT / "notebooks" / name)
        assert "run notebooks/icrl_experiment.ipynb" in (tmp_path / name).read_text()


def test_papermill_rejects_hf_token_as_a_parameter(tmp_path, monkeypatch):
    import papermill

    monkeypatch.delenv("ICRL_PARAMS_FILE", raising=False)
    with pytest.raises(papermill.PapermillExecutionError, match="hf_token must never be a notebook parameter"):
        _execute(tmp_path / "out.ipynb", {"hf_token": "hf_x", "output_dir": str(tmp_path / "outputs")})


def test_the_comparison_browser_lists_the_chosen_tasks_runs_and_draws_one_per_method_at_first():
    names = {"clinic150": ["zero-shot", "naive ICRL", "naive ICRL, T=2", "explorative ICRL, p_keep=0.5",
                           "explorative ICRL, 1 exemplar/label", "my_strategy, p_keep=0.1, T=1"],
             "trec_coarse": ["zero-shot", "ICL"]}
    runs = pd.DataFrame([{"model_name": "m", "task_name": task, "method": name, "run": f"{task}/{name}",
                          "seed": 100, "step": step, "accuracy": 0.1 + step / 100}
                         for task, listed in names.items() for name in listed for step in (0, 10)])
    browser = notebook.comparison_browser(runs)
    (_, task, every, none), boxes = browser.children[0].children, browser.children[1]

    def checked():
        return {box.description for box in boxes.children if box.value}

    assert task.value == "clinic150" and {b.description for b in boxes.children} == set(names["clinic150"])
    assert checked() == {"zero-shot", "naive ICRL", "explorative ICRL, p_keep=0.5"}
    every.click()
    assert checked() == set(names["clinic150"])
    none.click()
    assert checked() == set()
    task.value = "trec_coarse"
    assert {b.description for b in boxes.children} == checked() == set(names["trec_coarse"])
