"""How a server route is compared with the local backend: the route opened as a run opens it, greedy choices outside
near-ties, and sampled labels against the local backend's exact label distribution (chi-square)."""
from __future__ import annotations

import glob
import math
import subprocess
import sys
import time
from dataclasses import dataclass

import torch
from scipy import stats

from icrl_lib.engine.generation import LabelPredictor
from icrl_lib.engine.kvcache import extend_cache, new_cache
from icrl_lib.runs.backend import open_backend
from icrl_lib.runs.context import ContextBuilder
from icrl_lib.runs.plan import prepare
from tests.helpers import ROOT, label_logprobs

NEAR_TIE = 0.1  # nats between the two best allowed logits: below it the two engines' rounding may decide


def open_route(config, lm):
    """(route, plan) of ``config`` as ``run_experiment`` opens them (the probe included), on ``lm``'s tokenizer."""
    plan = prepare(config, lm)
    return open_backend(plan, ContextBuilder(plan)), plan


def greedy_margins(lm, trie, prompts) -> list[float]:
    """Per prompt, the smallest gap between the two best allowed logits along the local greedy path (in nats)."""
    out = []
    for prompt in prompts:
        cache = new_cache(lm)
        logits, node, margin = extend_cache(lm, cache, lm.encode(prompt)), (), math.inf
        while node not in trie.leaves:
            children = trie.children[node]
            if len(children) > 1:
                top = torch.topk(logits[list(children)].double(), 2).values
                margin = min(margin, float(top[0] - top[1]))
                token = children[int(torch.argmax(logits[list(children)]))]
            else:
                token = children[0]
            node += (token,)
            logits = extend_cache(lm, cache, [token])
        out.append(margin)
    return out


@dataclass(frozen=True)
class GreedyReference:
    """40 CLINIC150 prompts (16 episodes of context each), the local backend's greedy labels for them and which of
    them are clear of near-ties: computed once per session, compared with every server."""

    trie: object
    prompts: list
    labels: list
    clear: list

    @classmethod
    def of(cls, lm, data_dir, tmp_path) -> GreedyReference:
        from tests.engine.test_generation import make_prompts
        from tests.serving.conftest import quick

        plan = prepare(quick(tmp_path, data_dir, "reference", temperature=0.0), lm)
        prompts, _ = make_prompts(lm, plan.task, n_context=16, n_queries=40)
        labels = [p.label for p in LabelPredictor(lm, plan.trie, 0.0).predict(prompts, 1)]
        clear = [m > NEAR_TIE for m in greedy_margins(lm, plan.trie, prompts)]
        assert sum(clear) >= 0.8 * len(prompts), "too many near-ties: the comparison would say little"
        assert len(set(labels)) > 3
        return cls(plan.trie, prompts, labels, clear)

    def check(self, server_predictor) -> None:
        """Greedy labels equal the local backend's wherever the local margin is wider than NEAR_TIE."""
        ours = [p.label for p in server_predictor.predict(self.prompts, 1)]
        assert [x for x, c in zip(ours, self.clear) if c] == [x for x, c in zip(self.labels, self.clear) if c]


def assert_follows_local_law(server_predictor, lm, trie, prompt, n: int = 400, temperature: float = 1.0) -> None:
    """Labels drawn by ``server_predictor`` (each query its own seed) follow the local exact distribution."""
    exact = {label: math.exp(lp) for label, lp in label_logprobs(LabelPredictor(lm, trie, temperature),
                                                                 prompt).items()}
    drawn = [p.label for p in server_predictor.predict([prompt] * n, 7)]
    common = [label for label, p in exact.items() if p * n >= 5]  # chi-square needs expected counts >= 5
    assert len(common) >= 3, "a degenerate prompt cannot test a distribution"
    observed = [drawn.count(label) for label in common] + [sum(d not in common for d in drawn)]
    expected = [exact[label] * n for label in common] + [n * (1 - sum(exact[label] for label in common))]
    assert stats.chisquare(observed, expected).pvalue > 1e-3, (observed, [round(e, 1) for e in expected])


def kill_mid_run(server, config, after_steps: int = 5):
    """Run ``config`` with the command line against ``server``, kill the server (its whole process group) once
    ``after_steps`` steps are logged; (the finished process, with its output, and the steps logged)."""
    argv = [sys.executable, "-m", "icrl_lib", "run"] + [f"--{k}={v}" for k, v in config.to_dict().items()
                                                       if v is not None and not isinstance(v, bool)]
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log = config.output_dir + "/*/steps.jsonl"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not any(len(open(p).readlines()) >= after_steps for p in glob.glob(log)):
        time.sleep(0.2)
    server.stop()
    assert not server.alive_in_group()  # every process of the server went (vLLM's engine and workers too)
    out, err = proc.communicate(timeout=120)
    done = len(open(glob.glob(log)[0]).readlines())
    return subprocess.CompletedProcess(argv, proc.returncode, out, err), done
