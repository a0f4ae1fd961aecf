"""Prepare once: a config becomes a frozen, weight-free :class:`RunPlan` before any folder is locked or weight read.

The plan holds everything a run is decided by: the validated config, its run folder, the task and the rows it uses,
the model's tokenizer facts, the label trie, the context budget, the schedule of test
steps (with the paper's ICL stop rule) and where the code came from. ``icrl check``, the runner, the sweep status and
the launchers read it; nothing in it is computed twice. Everything a user can get wrong fails here, in one line
naming the parameter or file (UserError).
"""
from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from icrl_lib.engine.models import LanguageModel, ModelFacts, ModelSource, check_dtype, find_model
from icrl_lib.errors import UserError
from icrl_lib.paper.prompts import Episode, system_prompt
from icrl_lib.paths import project_root
from icrl_lib.runs.config import ExperimentConfig
from icrl_lib.runs.store import writable_run_dir
from icrl_lib.runs.stream import RunData, sample_data
from icrl_lib.runs.window import episode_budget
from icrl_lib.tasks.task import Example, Task, load_task
from icrl_lib.tasks.trie import LabelTrie


def test_schedule(steps: int, test_every: int) -> tuple[int, ...]:
    """The test steps: step 0, every step with (step + 1) % test_every == 0, and the last step (sorted, unique)."""
    return tuple(sorted({0, steps - 1} | {s for s in range(steps) if (s + 1) % test_every == 0}))


test_schedule.__test__ = False  # a library function, not a test, when a test module imports it


@dataclass(frozen=True)
class Schedule:
    """How many steps a run makes and at which of them it tests."""

    steps: int
    test_steps: tuple[int, ...]

    @classmethod
    def of(cls, config: ExperimentConfig, budget: int) -> Schedule:
        """Zero-shot: one test at step 0. ICL stops, as the paper's runs did, at the first test step at or after
        its context holds ``budget`` gold pairs. Otherwise every training step, tested per :func:`test_schedule`."""
        steps = 1 if config.zero_shot else config.train_k
        tests = test_schedule(steps, config.test_every)
        if not config.icrl and not config.zero_shot:
            steps = min([s for s in tests if s >= budget], default=steps - 1) + 1
            tests = tuple(s for s in tests if s < steps)
        return cls(steps, tests)


@dataclass(frozen=True)
class Provenance:
    """Where the results came from: the code's revision (and whether it had local changes) and the versions."""

    icrl: str
    revision: str | None  # git commit of the checkout, None outside one
    dirty: bool | None  # uncommitted changes in the checkout
    python: str
    torch: str
    transformers: str

    def line(self) -> str:
        """One line for the top of an executed notebook."""
        changes = {True: " + local changes", False: "", None: ", local changes not known"}[self.dirty]
        code = "no git checkout" if self.revision is None else f"commit {self.revision[:10]}{changes}"
        return (f"icrl {self.icrl} ({code}); python {self.python}, torch {self.torch}, "
                f"transformers {self.transformers}")


def checkout_state(root: Path) -> tuple[str | None, bool | None]:
    """The git commit of the checkout at ``root`` and whether tracked files differ from it (None: not known)."""
    revision, dirty = None, None
    try:
        revision = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                                  timeout=10, check=True).stdout.strip() or None
        # Not 10 s: where stat data is stale (a fresh clone, touched notebooks) status runs the nbstripout filter on
        # each notebook, about 2 s apiece. The limit only guards against a hung filesystem.
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                                    capture_output=True, text=True, timeout=600, check=True).stdout.strip())
    except (OSError, subprocess.SubprocessError):
        pass
    return revision, dirty


@lru_cache(maxsize=1)
def provenance() -> Provenance:
    """This process's :class:`Provenance` (git is asked once; versions come from package metadata, no import)."""
    def version(package: str) -> str:
        try:
            return importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            return "not installed"

    revision, dirty = checkout_state(project_root())
    return Provenance(version("icrl_lib"), revision, dirty, platform.python_version(), version("torch"),
                      version("transformers"))


@dataclass(frozen=True)
class RunPlan:
    """A run, decided: everything the loop needs except the model's weights."""

    config: ExperimentConfig
    run_dir: Path
    task: Task
    data: RunData
    source: ModelSource | None  # where the weights load from (None: a loaded model was given)
    model: ModelFacts
    trie: LabelTrie
    budget: int  # episodes a context may hold besides the exemplars
    schedule: Schedule
    system: str  # the system prompt's text
    exemplars: tuple[Episode, ...]  # gold exemplars shown at the start of every context
    provenance: Provenance

    @property
    def test_answers(self) -> tuple[str, ...]:
        return tuple(self.task.answer(ex) for ex in self.data.test)

    def gold_episode(self, example: Example) -> Episode:
        """``example`` shown with its gold label (:func:`gold_episode`)."""
        return gold_episode(self.task, example, self.config.icrl)

    def summary(self) -> dict[str, Any]:
        """The plan as ``meta.json`` records it (the sweep status reads the schedule from there)."""
        return {"max_context_examples": self.budget, "steps": self.schedule.steps,
                "test_steps": list(self.schedule.test_steps), "train_size": len(self.data.stream),
                "test_size": len(self.data.test), "exemplars": len(self.data.exemplars),
                "model": {"name": self.model.name, "context_window": self.model.context_window,
                          "eot_id": self.model.eot_id, "system_role": self.model.system_role,
                          "yarn_factor": self.model.yarn_factor},
                "provenance": vars(self.provenance)}


def prepare(config: ExperimentConfig, lm: LanguageModel | None = None) -> RunPlan:
    """The plan of ``config`` (``lm``: an already loaded model, whose facts are used). The config was checked when it
    was made (its task file read); checks, in order: that output_dir is writable, that ``model_name`` resolves, the
    data and its sizes, that the labels tokenize apart; then the context budget (cached per output_dir) and the
    schedule."""
    folder = writable_run_dir(config)
    if config.hf_token:
        os.environ["HF_TOKEN"] = config.hf_token  # for this process only; never written anywhere
    # The model is found (and its tokenizer read) before the data: a model that does not exist fails first.
    source, facts = (None, lm) if lm is not None else find_model(config.model_name, config.hf_token,
                                                                 config.trust_remote_code, config.yarn_factor)
    task = load_task(config.task, config.data_dir)
    data = sample_data(config, task)
    if lm is not None and lm.yarn_factor != config.yarn_factor:
        raise UserError(f"yarn_factor: the loaded model has {lm.yarn_factor}, the config asks for {config.yarn_factor}")
    if isinstance(lm, LanguageModel) and config.backend_entry.in_process:
        check_dtype(lm, config.dtype)
    return _decide(config, folder, task, data, source, facts, provenance())


def recorded_plan(config: ExperimentConfig, folder: Path, facts: ModelFacts, budget: int | None,
                  recorded: Provenance) -> RunPlan:
    """The plan of the run in ``folder``, from what it recorded: its config, the model's facts, the context budget it
    computed (None: computed again, as :func:`prepare` does) and where its code came from. Writes nothing, checks no
    output_dir and asks no git (the step inspector reads runs with it, even while they run)."""
    task = load_task(config.task, config.data_dir)
    return _decide(config, folder, task, sample_data(config, task), None, facts, recorded, budget)


def gold_episode(task: Task, example: Example, icrl: bool) -> Episode:
    """``example`` shown with its gold label, the one rule of gold exemplars: in ICRL as a correct prediction with
    positive feedback, in ICL as its answer."""
    answer = task.answer(example)
    return Episode(task.format_input(example), answer, answer if icrl else None, 1 if icrl else None)


def _decide(config: ExperimentConfig, folder: Path, task: Task, data: RunData, source: ModelSource | None,
            facts: ModelFacts, made_by: Provenance, budget: int | None = None) -> RunPlan:
    """The plan once the task, its data and the model's facts are known: label trie, budget, schedule, exemplars."""
    trie = task.label_trie(facts.encode, facts.eot_id, config.model_name)
    if budget is None:
        budget = 0 if config.zero_shot else episode_budget(config, facts, task, len(data.exemplars))
    exemplars = tuple(gold_episode(task, e, config.icrl) for e in data.exemplars)
    return RunPlan(config, folder, task, data, source, facts, trie, budget, Schedule.of(config, budget),
                   system_prompt(config.icrl, task.description, config.system_prompt), exemplars, made_by)
