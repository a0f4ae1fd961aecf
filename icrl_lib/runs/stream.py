"""The data of one run: gold exemplars, the training stream and the test set, drawn with the paper's seeds (the run
folder records their fingerprint: ``runs.identity.data_fingerprint``)."""
from __future__ import annotations

from dataclasses import dataclass

from icrl_lib.errors import UserError
from icrl_lib.runs.config import ExperimentConfig
from icrl_lib.tasks.task import Example, Task


@dataclass(frozen=True)
class RunData:
    """The rows one run uses: gold exemplars, the training stream and the test set."""

    exemplars: tuple[Example, ...]
    stream: tuple[Example, ...]
    test: tuple[Example, ...]


def sample_data(config: ExperimentConfig, task: Task) -> RunData:
    """Exemplars, training stream and test set of ``config``; UserError when a size exceeds the data."""
    if config.test_k is not None and config.test_k > len(task.test):
        raise UserError(f"test_k: {config.test_k} is more than the {len(task.test)} rows of the test split of "
                        f"{task.name}; allowed: 1..{len(task.test)}, or None for the whole split")
    train_k = 0 if config.zero_shot else config.train_k
    exemplars, stream = task.sample_train(train_k, config.training_seed,
                                          0 if config.zero_shot else config.exemplars_per_label)
    if len(stream) < train_k:
        left = f" left after {len(exemplars)} exemplars" if exemplars else ""
        raise UserError(f"train_k: {train_k} is more than the {len(stream)} training rows of {task.name}{left}; "
                        f"allowed: 1..{len(stream)}")
    return RunData(exemplars, stream, task.sample_test(config.test_k, config.test_seed))
