"""The paper's README commands, verbatim, through ``python -m icrl_lib run`` (only the program name changed).

Parsing needs no model; the run itself is exercised in tests/test_runner.py.
"""
from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from icrl_lib.paper.methods import name_run
from icrl_lib.runs.config import config_from_argv, load_config, with_paths_resolved

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = ROOT / "tests" / "data" / "paper_readme_commands.txt"
GRID_FOLDER = {"meta-llama/Meta-Llama-3.1-8B-Instruct": "llama-3.1-8b-instruct",
               "microsoft/Phi-3.5-mini-instruct": "phi-3.5-mini-instruct"}
GRID_METHOD = {"explorative ICRL": "explorative", "naive ICRL": "naive", "approximate ICRL": "approximate",
               "ICL": "icl"}


def readme_commands(model_name: str) -> list[list[str]]:
    """argv of every README command after ``python run_experiment.py``, with MODEL_NAME filled in.

    A backslash then spaces at a line end is read as a line continuation: the README's approximate CLINIC150
    command has one, and its flags are meant as one command.
    """
    text = "\n".join(line for line in COMMANDS.read_text().splitlines() if not line.startswith("#"))
    out = []
    for block in re.split(r"\n\s*\n", text.strip()):
        argv = shlex.split(re.sub(r"\\[ \t]*\n", " ", block))
        assert argv[:2] == ["python", "run_experiment.py"], block
        out.append([model_name if a == "MODEL_NAME" else a for a in argv[2:]])
    return out


def test_the_fixture_holds_the_readme_grid():
    configs = [config_from_argv(argv) for argv in readme_commands("m")]
    cells = sorted((name_run(c.to_dict()), c.task_name) for c in configs)
    tasks = ["banking77", "clinic150", "nlu", "trec_coarse", "trec_fine"]
    assert cells == sorted((m, t) for m in GRID_METHOD for t in tasks)


@pytest.mark.parametrize("model_name", sorted(GRID_FOLDER))
def test_every_readme_command_parses_to_its_grid_file(model_name):
    for argv in readme_commands(model_name):
        config = config_from_argv(argv)
        assert config.hf_token == "YOUR_HUGGINGFACE_TOKEN_HERE"  # accepted, never stored (see to_dict)
        name = f"{GRID_METHOD[name_run(config.to_dict())]}_{config.task_name}.yaml"
        grid = with_paths_resolved(load_config(ROOT / "params" / "grid" / GRID_FOLDER[model_name] / name))
        assert config.to_dict() == grid.to_dict(), name
        assert "hf_token" not in config.to_dict()


def test_paper_parser_defaults():
    """Flags the README leaves out take the paper's parser defaults."""
    naive_clinic = next(a for a in readme_commands("m") if "clinic150" in a and "random_biased_end" in a)
    assert "--test_k" not in naive_clinic
    config = config_from_argv(naive_clinic)
    assert config.test_k is None  # the whole test split
    assert config.max_context_examples is None  # as many as fit the window
    assert (config.max_contexts is None
            and config_from_argv(naive_clinic + ["--max_contexts", "-1"]).max_contexts is None)


@pytest.mark.parametrize("flags,needle", [
    (["--task_name", "bankin77"], "task_name"),
    (["--context_strategy_name", "random"], "context_strategy_name"),
    (["--context_p_keep", "1.5"], "context_p_keep"),
    (["--context_strategy_name", "approximate", "--approximate_context_sampling_method", "uniform"], "max_contexts"),
    (["--task_name", "banking77_top0"], "task_name"),
    (["--backend", "ollama"], "backend: got 'ollama'; allowed: local, llamacpp, llamacpp-choice, vllm, sglang"),
    (["--backend", "llamacpp"], "server_url: backend llamacpp needs the server's address"),
    (["--backend", "vllm", "--server_url", "127.0.0.1:8000"], "server_url: backend vllm needs"),
    (["--server_url", "http://127.0.0.1:8080"], "server_url: only for a server backend"),
    (["--backend", "llamacpp", "--server_url", "http://h:1", "--request_retries", "-1"], "request_retries"),
])
def test_bad_flags_name_the_parameter(flags, needle):
    with pytest.raises(ValueError, match=needle):
        config_from_argv(readme_commands("m")[0] + flags)


def test_help_lists_every_flag():
    import subprocess
    import sys
    from dataclasses import fields

    from icrl_lib.runs.config import ExperimentConfig

    proc = subprocess.run([sys.executable, "-m", "icrl_lib", "run", "--help"], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert all(f"--{f.name}" in proc.stdout for f in fields(ExperimentConfig))
    text = " ".join(proc.stdout.split())  # argparse wraps lines
    assert "--no-icrl_omit_feedback" in text and "after every test_every steps" in text
