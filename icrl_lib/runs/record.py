"""One step of a run as a typed, frozen record: what the loop writes as one line of ``steps.jsonl`` and what every
reader (replay, tables, analysis) gets back. The JSON layout is the run folder's format: keys and order are fixed
here and nowhere else."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ContextRecord:
    """The context a step used: episode indices into the history (frozen at that step) and its composition."""

    indices: tuple[int, ...] = ()
    context_index: int | None = None  # approximate ICRL: which of the K contexts
    context_lengths: tuple[int, ...] | None = None  # approximate ICRL: every context's length after this step
    size: int = 0  # episodes shown, exemplars included
    positive: int = 0  # of which with positive feedback shown


@dataclass(frozen=True)
class TrainRecord:
    """The step's training episode: the input, the answer and (ICRL) the prediction, its reward and the feedback."""

    example: int
    input: str
    answer: str
    prediction: str | None = None  # None for ICL (the gold label is shown instead)
    reward: int | None = None
    feedback: int | None = None  # the reward shown (after any flip)
    flipped: bool = False
    logprob: float | None = None


@dataclass(frozen=True)
class TestRecord:
    """Predictions on the whole test set at this step."""

    __test__ = False  # a record of the paper's "test" steps, not a test for pytest to collect

    predictions: tuple[str, ...]
    answers: tuple[str, ...]
    accuracy: float


@dataclass(frozen=True)
class StepRecord:
    """One completed step."""

    step: int
    context: ContextRecord
    train: TrainRecord | None  # None at a zero-shot step
    test: TestRecord | None  # None except at test steps
    tokens: Mapping[str, int]  # prompt / computed / generated tokens of the whole step
    train_tokens: Mapping[str, int]  # the training prompt alone (the paper's compute measure)
    cache: Mapping[str, int]  # KV cache held and evictions after the step
    seconds: float

    def to_json(self) -> dict[str, Any]:
        """The log line's object (the one writer of the format)."""
        c = self.context
        return {"step": self.step,
                "context": {"indices": list(c.indices), "context_index": c.context_index,
                            "context_lengths": list(c.context_lengths) if c.context_lengths is not None else None,
                            "size": c.size, "positive": c.positive},
                "train": None if self.train is None else dict(vars(self.train)),
                "test": None if self.test is None else {"predictions": list(self.test.predictions),
                                                        "answers": list(self.test.answers),
                                                        "accuracy": self.test.accuracy},
                "tokens": dict(self.tokens), "train_tokens": dict(self.train_tokens), "cache": dict(self.cache),
                "seconds": self.seconds}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> StepRecord:
        """A record from its log line's object; KeyError / TypeError / ValueError when malformed."""
        c = d.get("context") or {}
        lengths = c.get("context_lengths")
        train, test = d["train"], d["test"]
        return cls(
            step=d["step"],
            context=ContextRecord(tuple(c.get("indices") or ()), c.get("context_index"),
                                  tuple(lengths) if lengths is not None else None, c.get("size", 0),
                                  c.get("positive", 0)),
            train=None if train is None else TrainRecord(**train),
            test=None if test is None else TestRecord(tuple(test["predictions"]), tuple(test["answers"]),
                                                      float(test["accuracy"])),
            tokens=d.get("tokens") or {}, train_tokens=d.get("train_tokens") or {}, cache=d.get("cache") or {},
            seconds=d.get("seconds", float("nan")))

    @property
    def model_calls(self) -> int:
        """Prompts this step sent to the model (the training query, and the test set as one call)."""
        return int(self.train is not None and self.train.prediction is not None) + int(self.test is not None)
