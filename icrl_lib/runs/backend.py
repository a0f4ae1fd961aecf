"""A run's backend, prepared: its route opened (a server probed) before the run folder is locked, checked on resume.

Which backend is a registry entry (:mod:`icrl_lib.serving.backends`); its plug-in class does the rest, so nothing
here depends on which backend it is."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from icrl_lib.paper.prompts import Episode

if TYPE_CHECKING:  # the loop imports this module; these are its arguments' types only
    from icrl_lib.runs.context import ContextBuilder
    from icrl_lib.runs.plan import RunPlan


def open_backend(plan: RunPlan, builder: ContextBuilder) -> Any:
    """The run's route (``open`` of its backend's plug-in class). A server's tokenization check uses prompts this run
    renders: a test query on an empty context and a query after one episode with its feedback (a training example,
    or a test one for a zero-shot run, which has no training stream)."""
    c, task, data = plan.config, plan.task, plan.data
    entry = c.backend_entry
    examples = data.stream or data.test
    first = examples[0]
    episode = Episode(task.format_input(first), task.answer(first), task.answer(first) if c.icrl else None,
                      1 if c.icrl else None)
    samples = [builder.prompt([], task.format_input(data.test[0])),
               builder.prompt([episode], task.format_input(examples[min(1, len(examples) - 1)]))]
    return entry.plugin_class().open(entry, plan, samples)
