"""The ICRL experiment loop (the paper's ``run_experiment.py``), resumable step by step.

Each step: the strategy builds the context from past episodes (seeded with ``seed + step``); ICRL predicts the
next training input, gets reward 1/0 and shows it (possibly flipped) as feedback; ICL records the gold label.
At step 0, at every step with ``(step + 1) % test_every == 0`` and at the last step, the whole test set is
predicted on that same context. Every completed step is one fsynced line in ``steps.jsonl``; a rerun replays the
logged steps (checking that the strategy reproduces every logged context) and continues after the last one.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .config import ExperimentConfig
from .generation import LabelPredictor
from .models import LanguageModel, load_model
from .prompts import Episode, build_messages, render_prompt, system_prompt
from .storage import RunStore
from .strategies import make_strategy
from .tasks import Task, load_task
from .window import cached_max_examples, max_examples_for_window, usable_window

log = logging.getLogger("icrl")


@dataclass(frozen=True)
class RunResult:
    """What a finished (or resumed-and-finished) run leaves behind."""

    run_dir: Path
    records: list[dict]
    max_context_examples: int

    @property
    def steps(self):
        from .results import steps_table

        return steps_table(self.records)

    @property
    def tests(self):
        from .results import evaluation_table

        return evaluation_table(self.records)


def evaluation_steps(steps: int, test_every: int) -> list[int]:
    """Step 0, every step with (step + 1) % test_every == 0, and the last step (sorted, unique)."""
    return sorted({0, steps - 1} | {s for s in range(steps) if (s + 1) % test_every == 0})


def flip_coin(seed: int, step: int) -> float:
    """The paper's coin for flipped feedback: the first uniform draw of default_rng(seed + step)."""
    return float(np.random.default_rng(seed + step).random())


def resolve_max_examples(config: ExperimentConfig, lm: LanguageModel, task: Task, exemplars: int) -> int:
    """``max_context_examples`` as given, or as many worst-case episodes as fit (cached per model/task/window)."""
    if config.max_context_examples is not None:
        return config.max_context_examples
    window = usable_window(lm, config.max_window_tokens)
    mode = "icrl" + ("_nofeedback" if config.icrl_omit_feedback else "") if config.icrl else "icl"
    # "v2": the worst case became the n longest distinct inputs (v1 repeated the single longest one).
    key = f"v2|{config.model_name}|{task.name}|{window}|{mode}|exemplars{exemplars}|{hash_text(config.system_prompt)}"
    return cached_max_examples(
        Path(config.output_dir) / "_cache" / "max_context_examples.json", key,
        lambda: max_examples_for_window(lm, task, window, icrl=config.icrl, omit_feedback=config.icrl_omit_feedback,
                                        template=config.system_prompt, extra_episodes=exemplars),
    )


def hash_text(text: str | None) -> str:
    import hashlib

    return "default" if text is None else hashlib.sha256(text.encode()).hexdigest()[:8]


def find_max_context_examples(model_name: str, task_name: str, max_window_tokens: int | None = None,
                              data_dir: str | None = None, icrl: bool = True, lm: LanguageModel | None = None) -> int:
    """The paper's tool: most episodes whose worst-case prompt fits 95% of ``max_window_tokens``."""
    task = load_task(task_name, data_dir)
    lm = lm or load_model(model_name)
    return max_examples_for_window(lm, task, usable_window(lm, max_window_tokens), icrl=icrl)


def run_experiment(config: ExperimentConfig, progress: bool | None = True, lm: LanguageModel | None = None) -> RunResult:
    """Run (or resume) one experiment; ``progress`` True = tqdm bar, False = a log line every ``log_every`` steps."""
    config.validate()  # before anything is loaded or written
    if config.verbose and not logging.getLogger().handlers and not log.handlers:
        # In a notebook nothing configures logging, and INFO records would vanish: show them on stderr.
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
    task = load_task(config.task_name, config.data_dir)
    store = RunStore.open(config)
    records = store.records()
    if config.hf_token:
        import os

        os.environ["HF_TOKEN"] = config.hf_token  # for this process only; never written anywhere
    lm = lm or load_model(config.model_name, config.device, config.trust_remote_code)
    zero_shot = config.max_context_examples == 0
    exemplars, stream = task.sample_train(0 if zero_shot else config.train_k, config.training_seed,
                                          0 if zero_shot else config.exemplars_per_label)
    test = task.sample_test(config.test_k, config.test_seed)
    max_examples = 0 if zero_shot else resolve_max_examples(config, lm, task, len(exemplars))
    steps = 1 if zero_shot else len(stream)
    to_test = evaluation_steps(steps, config.test_every)
    if not config.icrl and not zero_shot:  # ICL: the context is full once max_examples gold pairs exist
        steps = min([s for s in to_test if s >= max_examples], default=steps - 1) + 1
        to_test = [s for s in to_test if s < steps]
    loop = _Loop(config, task, lm, store, exemplars, stream, test, max_examples, steps, set(to_test))
    pool = loop.predictor.pool
    store.write_json("meta.json", {
        "max_context_examples": max_examples, "steps": steps, "test_steps": to_test, "train_size": len(stream),
        "test_size": len(test), "exemplars": len(exemplars), "kv_cache": {
            "budget_tokens": pool.budget_tokens, "max_entries": pool.max_entries,
            "bytes_per_token": lm.kv_bytes_per_token}, "model": {
            "name": lm.name, "context_window": lm.context_window, "eot_id": lm.eot_id, "device": lm.device,
            "system_role": lm.system_role}})
    loop.replay(records)
    loop.run(progress)
    from .results import write_tables

    write_tables(store)
    return RunResult(store.path, store.records(), max_examples)


class _Loop:
    """State of one run: history of episodes, strategy state, predictor, progress reporting."""

    def __init__(self, config, task, lm, store, exemplars, stream, test, max_examples, steps, to_test):
        self.c, self.task, self.lm, self.store = config, task, lm, store
        self.stream, self.test, self.steps, self.to_test = stream, test, steps, to_test
        self.icrl = config.icrl and max_examples > 0
        self.strategy = None if max_examples == 0 else make_strategy(
            config.context_strategy_name, max_examples=max_examples, p_keep=config.context_p_keep,
            max_contexts=config.max_contexts, sampling=config.approximate_context_sampling_method)
        self.state = self.strategy.initial_state() if self.strategy else None
        self.exemplars = [Episode(task.format_input(e), task.answer(e), task.answer(e) if self.icrl else None,
                                  1 if self.icrl else None) for e in exemplars]
        self.history: list[Episode] = []
        self.system = system_prompt(self.icrl, task.description, config.system_prompt)
        # One cache entry per approximate context (they only grow, so each is extended in place) plus one spare.
        self.predictor = LabelPredictor(lm, task.labels, config.temperature, fast=config.fast,
                                        batch_size=config.batch_size,
                                        max_cached_contexts=max(9, (config.max_contexts or 0) + 1))
        self.debug_left = config.debug_k
        self.rewards: list[int] = []
        self.last_test: float | None = None
        self.done = 0  # steps already in the log

    def _select(self, step: int):
        if self.strategy is None:
            return None
        feedbacks = [e.feedback for e in self.history]
        selection, self.state = self.strategy.select(self.state, feedbacks, self.c.seed + step)
        return selection

    def replay(self, records: list[dict]) -> None:
        """Rebuild history and strategy state from logged steps, checking every logged context is reproduced."""
        for step, rec in enumerate(records):
            if rec["step"] != step:
                raise ValueError(f"{self.store.path}/steps.jsonl: expected step {step}, found {rec['step']}")
            selection = self._select(step)
            logged = rec["context"]["indices"] if rec.get("context") else []
            if selection is not None and list(selection.indices) != list(logged):
                raise ValueError(f"{self.store.path}: step {step} context differs from the log; the run was made by "
                                 "different code or data — use a new output_dir")
            self._remember(rec)
        self.done = len(records)

    def _remember(self, rec: dict) -> None:
        if rec.get("test"):
            self.last_test = rec["test"]["accuracy"]
        train = rec.get("train")
        if train is None:
            return
        self.history.append(Episode(train["input"], train["answer"], train["prediction"], train["feedback"]))
        if train["reward"] is not None:
            self.rewards.append(train["reward"])

    def _prompt(self, episodes: list[Episode], query: str | None) -> str:
        messages = build_messages(self.system, episodes, query, icrl=self.icrl, prediction_prefix=self.task.prediction_prefix,
                                  omit_feedback=self.c.icrl_omit_feedback, system_role=self.lm.system_role)
        if query is None:
            return self.lm.tokenizer.apply_chat_template(messages, tokenize=False)
        return render_prompt(self.lm.tokenizer, messages, self.task.prediction_prefix)

    def _debug(self, prompts: list[str]) -> None:
        for prompt in prompts[: max(self.debug_left, 0)]:
            log.info("model call prompt:\n%s", prompt)
            with open(self.store.path / "debug_prompts.txt", "a", encoding="utf-8") as fh:
                fh.write(prompt + "\n" + "=" * 80 + "\n")
            self.debug_left -= 1

    def step(self, step: int) -> dict[str, Any]:
        started = time.perf_counter()
        selection = self._select(step)
        episodes = self.exemplars + ([self.history[i] for i in selection.indices] if selection else [])
        context = self._prompt(episodes, None)
        train = None
        if self.strategy is not None:
            ex = self.stream[step]
            query, answer = self.task.format_input(ex), self.task.answer(ex)
            train = {"example": step, "input": query, "answer": answer, "prediction": None, "reward": None,
                     "feedback": None, "flipped": False, "logprob": None}
            if self.icrl:
                prompt = self._prompt(episodes, query)
                self._debug([prompt])
                pred = self.predictor.predict([prompt], self.c.seed + step, stream=0, context=context)[0]
                reward = int(pred.label == answer)
                flipped = bool(self.c.icrl_flip_feedback and flip_coin(self.c.seed, step) < self.c.icrl_flip_feedback_prob)
                train.update(prediction=pred.label, reward=reward, feedback=1 - reward if flipped else reward,
                             flipped=flipped, logprob=pred.logprob)
        test = None
        if step in self.to_test:
            prompts = [self._prompt(episodes, self.task.format_input(ex)) for ex in self.test]
            self._debug(prompts[:1])
            preds = self.predictor.predict(prompts, self.c.seed + step, stream=1, context=context)
            answers = [self.task.answer(ex) for ex in self.test]
            labels = [p.label for p in preds]
            test = {"predictions": labels, "answers": answers,
                    "accuracy": float(np.mean([p == a for p, a in zip(labels, answers)])) if answers else None}
        ctx = {"indices": list(selection.indices) if selection else [],
               "context_index": getattr(selection, "context_index", None),
               "context_lengths": list(selection.context_lengths) if selection and selection.context_lengths else None,
               "size": len(episodes), "positive": sum(1 for e in episodes if e.feedback == 1)}
        return {"step": step, "context": ctx, "train": train, "test": test, "tokens": self.predictor.tokens.take(),
                "cache": self.predictor.cache_report(), "seconds": round(time.perf_counter() - started, 4)}

    def run(self, progress: bool | None) -> None:
        start = self.done
        if start >= self.steps:
            return
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=self.steps, initial=start, desc=f"{self.task.name} {self.c.context_strategy_name}", unit="step")
        for step in range(start, self.steps):
            rec = self.step(step)
            self.store.append(rec)
            self._remember(rec)
            self._report(step, rec, bar)
        if bar is not None:
            bar.close()

    def _report(self, step: int, rec: dict, bar) -> None:
        running = float(np.mean(self.rewards)) if self.rewards else float("nan")
        test = "-" if self.last_test is None else f"{self.last_test:.3f}"
        if bar is not None:
            bar.set_postfix(running_acc=f"{running:.3f}", test_acc=test, refresh=False)
            bar.update(1)
        elif (step + 1) % self.c.log_every == 0 or rec["test"] or step == self.steps - 1:
            # Headless (papermill, batch logs): one coarse line instead of a bar that never refreshes.
            print(f"[icrl] step {step + 1}/{self.steps} running_acc={running:.3f} test_acc={test} "
                  f"context={rec['context']['size']} tokens={rec['tokens']['computed']}/{rec['tokens']['prompt']}",
                  flush=True)
        if self.c.verbose:
            log.info("step %d: %s", step, {k: rec[k] for k in ("context", "train", "tokens")})
