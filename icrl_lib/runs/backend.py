"""A run's backend, prepared: its route opened (a server probed) before the run folder is locked, checked on resume.

Which backend is a registry entry (:mod:`icrl_lib.serving.backends`); its plug-in class does the rest, so nothing
here depends on which backend it is."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the loop imports this module; these are its arguments' types only
    from icrl_lib.runs.context import ContextBuilder
    from icrl_lib.runs.plan import RunPlan


def open_backend(plan: RunPlan, builder: ContextBuilder) -> Any:
    """The run's route (``open`` of its backend's plug-in class). A server's tokenization check uses prompts this run
    renders: a test query on an empty context and a query after one gold episode (a training example, or a test one
    for a zero-shot run, which has no training stream); a route in this process probes nothing, so none is rendered."""
    entry = plan.config.backend_entry
    samples: list[str] = []
    if not entry.in_process:
        task, data = plan.task, plan.data
        examples = data.stream or data.test
        samples = [builder.prompt([], task.format_input(data.test[0])),
                   builder.prompt([plan.gold_episode(examples[0])],
                                  task.format_input(examples[min(1, len(examples) - 1)]))]
    return entry.plugin_class().open(entry, plan, samples)
