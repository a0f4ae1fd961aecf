"""The llama.cpp backend against a real llama-cpp-python server on 127.0.0.1 serving the embedded GGUF: the probe,
greedy predictions equal to the local backend's, sampled labels following the local backend's exact distribution,
reproducible per-query seeds, a run that resumes identically after the server was killed, one-line errors."""
from __future__ import annotations

import dataclasses
import glob
import json
import math
import subprocess
import sys
import time

import pytest
import torch
from scipy import stats

from icrl_lib.analysis.load import read
from icrl_lib.engine.generation import LabelPredictor
from icrl_lib.engine.kvcache import extend_cache, new_cache
from icrl_lib.errors import ServerError, UserError
from icrl_lib.runs.config import ExperimentConfig
from icrl_lib.runs.context import ContextBuilder
from icrl_lib.runs.loop import run_experiment
from icrl_lib.runs.plan import prepare
from icrl_lib.serving.llamacpp import token_grammar
from icrl_lib.serving.local_server import LocalLlamaServer
from icrl_lib.serving.probe import connect
from icrl_lib.tasks.task import load_task
from icrl_lib.tasks.trie import LabelTrie
from tests.engine.test_generation import make_prompts
from tests.helpers import ROOT, assert_one_line_error, label_logprobs, strip_measurements
from tests.serving.conftest import free_port, start

pytestmark = [pytest.mark.model, pytest.mark.data]
NEAR_TIE = 0.1  # nats between the two best allowed logits: below it the two engines' rounding may decide


def grammar_predictor(server, lm, trie, temperature):
    conn = connect("llamacpp", server.url, None, None, 60.0, 2, lm.encode, ["Query: hello"])
    return conn.predictor(lm.encode_batch, trie, temperature, banned=[0]), conn


def quick(tmp_path, data_dir, name, **kw) -> ExperimentConfig:
    """The quickstart's configuration (approximate ICRL, 8 contexts, CLINIC150), shortened."""
    base = dict(task_name="clinic150", context_strategy_name="approximate_only_positive", max_contexts=8,
                approximate_context_sampling_method="uniform", context_p_keep=0.5, max_context_examples=64,
                train_k=40, test_every=20, test_k=20, debug_k=0, data_dir=str(data_dir),
                output_dir=str(tmp_path / name))
    return ExperimentConfig.from_dict({**base, **kw})


def test_the_probe_names_server_and_model_and_checks_tokenization(llama_server, lm):
    conn = connect("llamacpp", llama_server.url, None, None, 60.0, 2, lm.encode,
                   ["<|im_start|>user\nQuery: where is my order?<|im_end|>\n<|im_start|>assistant\nIntent:"])
    assert conn.info.software.startswith("llama-cpp-python 0.3") and conn.info.exact and not conn.info.logprobs
    assert conn.info.model.endswith(".gguf")
    with pytest.raises(UserError, match=r"^server_model: http://127\.0\.0\.1:\d+ serves '.*', not 'llama-70b'$"):
        connect("llamacpp", llama_server.url, "llama-70b", None, 60.0, 2, lm.encode, [])
    with pytest.raises(UserError, match="tokenizes differently from model_name's tokenizer"):
        connect("llamacpp", llama_server.url, None, None, 60.0, 2, lambda text: lm.encode(text)[1:], ["Query: hi"])


def test_the_grammar_admits_exactly_the_canonical_label_sequences(lm, data_dir):
    task = load_task("clinic150", str(data_dir))
    trie = LabelTrie.build(task.labels, lm.encode, lm.eot_id)
    grammar = token_grammar(trie)
    assert grammar.count("|") == len(task.labels) - 1 and f"<[{lm.eot_id}]>" not in grammar
    order = " ".join(f"<[{t}]>" for t in lm.encode(" order"))
    assert f"( {order} )" in grammar  # a label that is a prefix of another ("order status") is its own alternative


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


def test_greedy_predictions_equal_the_local_backends_but_at_near_ties(llama_server, lm, data_dir):
    """llama.cpp computes the Q4_1 weights with 8-bit activations, the local backend with the dequantized fp32
    weights: logits differ by about 0.01-0.02. Greedy choices must agree wherever the local margin is wider than
    NEAR_TIE; measured: 38 of 40 agree, the two others are ties within 0.015 nats."""
    task = load_task("clinic150", str(data_dir))
    trie = LabelTrie.build(task.labels, lm.encode, lm.eot_id)
    prompts, _ = make_prompts(lm, task, n_context=16, n_queries=40)
    server, _ = grammar_predictor(llama_server, lm, trie, 0.0)
    ours, theirs = server.predict(prompts, 1), LabelPredictor(lm, trie, 0.0).predict(prompts, 1)
    clear = [m > NEAR_TIE for m in greedy_margins(lm, trie, prompts)]
    assert sum(clear) >= 0.8 * len(prompts), "too many near-ties: the comparison would say little"
    assert [p.label for p, c in zip(ours, clear) if c] == [p.label for p, c in zip(theirs, clear) if c]
    assert len({p.label for p in theirs}) > 3 and all(p.logprob is None for p in ours)


def test_sampled_labels_follow_the_local_backends_exact_distribution(llama_server, lm, data_dir):
    task = load_task("clinic150", str(data_dir))
    trie = LabelTrie.build(task.labels, lm.encode, lm.eot_id)
    prompt = make_prompts(lm, task, n_context=8, n_queries=1)[0][0]
    local = LabelPredictor(lm, trie, 1.0)
    exact = {label: math.exp(lp) for label, lp in label_logprobs(local, prompt).items()}
    server, _ = grammar_predictor(llama_server, lm, trie, 1.0)
    n = 400
    drawn = [p.label for p in server.predict([prompt] * n, 7)]  # query i draws with its own seed
    common = [label for label, p in exact.items() if p * n >= 5]  # chi-square needs expected counts >= 5
    assert len(common) >= 3, "a degenerate prompt cannot test a distribution"
    observed = [drawn.count(label) for label in common] + [sum(d not in common for d in drawn)]
    expected = [exact[label] * n for label in common] + [n * (1 - sum(exact[label] for label in common))]
    assert stats.chisquare(observed, expected).pvalue > 1e-3, (observed, [round(e, 1) for e in expected])
    assert server.predict([prompt] * 20, 7) == server.predict([prompt] * 20, 7)[:20]  # seeds reproduce
    assert server.predict([prompt] * 20, 7) != server.predict([prompt] * 20, 8)


def test_the_quickstart_runs_against_the_server_and_starts_where_the_local_run_starts(llama_server, lm, data_dir,
                                                                                      tmp_path):
    """The quickstart's configuration, shortened, at T=0 on both backends. Step 0 (empty context) tests the same
    prompts: equal predictions but at near-ties. Later steps may part at the first near-tie of a training query
    (a different prediction changes every later context), so they are not compared."""
    local = run_experiment(quick(tmp_path, data_dir, "local", temperature=0.0), progress=False, lm=lm)
    served = run_experiment(quick(tmp_path, data_dir, "served", temperature=0.0, backend="llamacpp",
                                  server_url=llama_server.url), progress=False)
    assert "@llamacpp" in served.run_dir.name and "@" not in local.run_dir.name
    assert len(served.records) == len(local.records) == 40
    plan = prepare(quick(tmp_path, data_dir, "local", temperature=0.0), lm)
    builder = ContextBuilder(plan)
    step0 = [builder.prompt([], plan.task.format_input(ex)) for ex in plan.data.test]  # the empty context
    clear = [m > NEAR_TIE for m in greedy_margins(lm, plan.trie, step0)]
    pairs = list(zip(served.records[0].test.predictions, local.records[0].test.predictions, clear))
    assert sum(clear) >= 15 and all(a == b for a, b, c in pairs if c), pairs
    meta = json.loads((served.run_dir / "meta.json").read_text())
    assert meta["server"]["software"].startswith("llama-cpp-python") and meta["server"]["backend"] == "llamacpp"
    assert served.steps["computed_tokens"].isna().all() and (served.steps["prompt_tokens"] > 0).all()
    assert set(read(tmp_path / "served").tests["model_name"]) == {"smollm2-135m-instruct@llamacpp"}


def test_a_run_stops_cleanly_when_the_server_dies_and_resumes_identically(lm, data_dir, tmp_path):
    server = start(LocalLlamaServer(tmp_path / "server.log"))
    try:
        config = quick(tmp_path, data_dir, "out", train_k=30, test_every=10, test_k=10, backend="llamacpp",
                       server_url=server.url, request_retries=1, request_timeout=30.0)
        argv = [sys.executable, "-m", "icrl_lib", "run"] + [f"--{k}={v}" for k, v in config.to_dict().items()
                                                           if v is not None and not isinstance(v, bool)]
        proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        log = config.output_dir + "/*/steps.jsonl"
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not any(
                len(open(p).readlines()) >= 5 for p in glob.glob(log)):
            time.sleep(0.2)
        server.stop()
        out, err = proc.communicate(timeout=120)
        done = len(open(glob.glob(log)[0]).readlines())
        assert proc.returncode == 2 and 5 <= done < 30, (proc.returncode, err[-500:])
        assert "HTTP Request" not in err  # one log line per request would bury the progress lines
        line = assert_one_line_error(subprocess.CompletedProcess(argv, proc.returncode, out, err),
                                     "cannot connect", "rerun the same command to resume")
        assert f"{done} steps are logged" in line
        start(server)
        resumed = run_experiment(config, progress=False)
        whole = run_experiment(dataclasses.replace(config, output_dir=str(tmp_path / "whole")), progress=False)
        assert strip_measurements(resumed.records) == strip_measurements(whole.records)
    finally:
        server.stop()


def test_a_wrong_server_url_is_one_line_before_any_folder_is_made(tmp_path, data_dir):
    config = quick(tmp_path, data_dir, "out", backend="llamacpp", server_url=f"http://127.0.0.1:{free_port()}")
    argv = [sys.executable, "-m", "icrl_lib", "run", "--backend", "llamacpp", "--server_url", config.server_url,
            "--task_name", "clinic150", "--data_dir", str(data_dir), "--output_dir", config.output_dir]
    proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert_one_line_error(proc, "server_url:", "cannot connect", config.server_url)
    assert not list((tmp_path / "out").glob("*/steps.jsonl"))


def test_server_errors_surface_in_one_line_with_the_servers_reason(llama_server, lm):
    """llama-cpp-python answers a malformed request with HTTP 500 (retried like any 5xx; here no retry)."""
    conn = connect("llamacpp", llama_server.url, None, None, 60.0, 0, lm.encode, [])
    expected = r"^POST http://127\.0\.0\.1:\d+/v1/completions: HTTP 500: 1 validation error.*temperature.*1 tries"
    with pytest.raises(ServerError, match=expected):
        conn.client.post("/v1/completions", {"prompt": "x", "temperature": "hot", "max_tokens": 1})


def test_the_approximate_route_is_refused_unless_asked_and_named_in_runs_and_tables(llama_server, lm, data_dir,
                                                                                 tmp_path):
    with pytest.raises(ValueError, match="backend: llamacpp-choice samples labels approximately .* set "
                                         "allow_approximate: true"):
        quick(tmp_path, data_dir, "x", backend="llamacpp-choice", server_url=llama_server.url)
    config = quick(tmp_path, data_dir, "approx", backend="llamacpp-choice", server_url=llama_server.url,
                   allow_approximate=True, train_k=4, test_every=2, test_k=10, temperature=0.0)
    result = run_experiment(config, progress=False)
    assert "@llamacpp-choice" in result.run_dir.name
    meta = json.loads((result.run_dir / "meta.json").read_text())
    assert meta["server"]["exact"] is False and meta["server"]["route"].startswith("APPROXIMATE")
    tests = read(tmp_path / "approx").tests
    assert set(tests["model_name"]) == {"smollm2-135m-instruct@llamacpp-choice"} and not tests["exact"].any()
    assert all(p in load_task("clinic150", str(data_dir)).labels for r in result.records if r.test
               for p in r.test.predictions)
