"""The llamacpp backend against both real llama.cpp servers on 127.0.0.1 serving the embedded GGUF: llama.cpp's own
llama-server (token-id prompts, its sampler fields, started with far-from-neutral sampling defaults) and
llama-cpp-python's server (text prompts). The probe, greedy predictions equal to the local backend's but at
near-ties, sampled labels following the local exact distribution, reproducible per-query seeds, a run that resumes
identically after the server was killed, BOS handled as the model needs it, one-line errors."""
from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from types import SimpleNamespace

import gguf
import httpx
import pytest

from icrl_lib.analysis.load import read
from icrl_lib.engine.embedded import embedded_gguf_file
from icrl_lib.errors import ServerRefused, UserError
from icrl_lib.runs.context import ContextBuilder
from icrl_lib.runs.loop import run_experiment
from icrl_lib.runs.plan import prepare
from icrl_lib.serving.backends import BACKENDS
from icrl_lib.serving.llamacpp import LlamaCppRoute, token_grammar
from icrl_lib.tasks.task import load_task
from icrl_lib.tasks.trie import LabelTrie
from tests.engine.test_generation import make_prompts
from tests.helpers import ROOT, assert_one_line_error, strip_measurements
from tests.serving.agreement import NEAR_TIE, assert_follows_local_law, greedy_margins, kill_mid_run, open_route
from tests.serving.conftest import LlamaCppPythonServer, LlamaServer, free_port, quick, start

pytestmark = [pytest.mark.model, pytest.mark.data]


def test_the_probe_names_server_and_model_and_checks_tokenization(llamacpp, lm, data_dir, tmp_path):
    route, _ = open_route(quick(tmp_path, data_dir, "x", backend="llamacpp", server_url=llamacpp.url), lm)
    info = route.info
    if isinstance(llamacpp, LlamaServer):
        assert info.software.startswith("llama.cpp llama-server") and route.slots == 4
        assert info.detail.startswith("prompts as token ids; samplers: [temperature]")
    else:
        assert info.software.startswith("llama-cpp-python 0.3") and route.slots == 1
        assert info.detail.startswith("prompts as text")
    assert info.exact and not info.logprobs and info.model.endswith(".gguf")
    assert info.tokenization.endswith("equal model_name's on 2 rendered prompts")
    with pytest.raises(UserError, match=r"^server_model: http://127\.0\.0\.1:\d+ serves '.*', not 'llama-70b'$"):
        open_route(quick(tmp_path, data_dir, "x", backend="llamacpp", server_url=llamacpp.url,
                         server_model="llama-70b"), lm)


def test_a_server_that_tokenizes_differently_is_refused_before_the_run(llama_server, lm, data_dir, tmp_path):
    config = quick(tmp_path, data_dir, "x", backend="llamacpp", server_url=llama_server.url)
    plan = prepare(config, lm)
    other = SimpleNamespace(**{**vars(plan), "model": SimpleNamespace(encode=lambda text: lm.encode(text)[1:],
                                                                      context_window=8192)})
    with pytest.raises(UserError, match="^server_url: .* tokenizes differently from model_name's tokenizer"):
        LlamaCppRoute.open(BACKENDS["llamacpp"], other, ["<|im_start|>user\nQuery: hi<|im_end|>"])
    assert not list((tmp_path / "x").glob("*/steps.jsonl"))


def test_the_grammar_admits_exactly_the_canonical_label_sequences(lm, data_dir):
    task = load_task("clinic150", str(data_dir))
    trie = LabelTrie.build(task.labels, lm.encode, lm.eot_id)
    grammar = token_grammar(trie)
    assert grammar.count("|") == len(task.labels) - 1 and f"<[{lm.eot_id}]>" not in grammar
    order = " ".join(f"<[{t}]>" for t in lm.encode(" order"))
    assert f"( {order} )" in grammar  # a label that is a prefix of another ("order status") is its own alternative


def test_greedy_predictions_equal_the_local_backends_but_at_near_ties(llamacpp, greedy_reference, lm, data_dir,
                                                                      tmp_path):
    """llama.cpp computes the Q4_1 weights with 8-bit activations, the local backend with the dequantized fp32
    weights: logits differ by about 0.01-0.02. Greedy choices must agree wherever the local margin is wider than
    NEAR_TIE (measured on llama-cpp-python: 38 of 40 agree, the two others are ties within 0.015 nats)."""
    config = quick(tmp_path, data_dir, "x", backend="llamacpp", server_url=llamacpp.url, temperature=0.0)
    server = open_route(config, lm)[0].predictor()
    greedy_reference.check(server)
    assert all(p.logprob is None for p in server.predict(greedy_reference.prompts[:2], 1))


def test_sampled_labels_follow_the_local_backends_exact_distribution(llamacpp, lm, data_dir, tmp_path):
    """On llama-server this also shows the request neutralises its far-from-neutral command-line defaults."""
    route, plan = open_route(quick(tmp_path, data_dir, "x", backend="llamacpp", server_url=llamacpp.url), lm)
    prompt = make_prompts(lm, plan.task, n_context=8, n_queries=1)[0][0]
    server = route.predictor()
    assert_follows_local_law(server, lm, plan.trie, prompt)
    assert server.predict([prompt] * 20, 7) == server.predict([prompt] * 20, 7)  # seeds reproduce
    assert server.predict([prompt] * 20, 7) != server.predict([prompt] * 20, 8)


@pytest.fixture(scope="module")
def local_quickstart(lm, data_dir, tmp_path_factory):
    """The shortened quickstart at T=0 on the local backend, and which of its step-0 test prompts are clear of
    near-ties."""
    tmp = tmp_path_factory.mktemp("local")
    local = run_experiment(quick(tmp, data_dir, "local", temperature=0.0), progress=False, lm=lm)
    plan = prepare(quick(tmp, data_dir, "local", temperature=0.0), lm)
    builder = ContextBuilder(plan)
    step0 = [builder.prompt([], plan.task.format_input(ex)) for ex in plan.data.test]  # the empty context
    return local, [m > NEAR_TIE for m in greedy_margins(lm, plan.trie, step0)]


def test_the_quickstart_runs_against_the_server_and_starts_where_the_local_run_starts(llamacpp, local_quickstart,
                                                                                      lm, data_dir, tmp_path):
    """The quickstart's configuration, shortened, at T=0 on both backends. Step 0 (empty context) tests the same
    prompts: equal predictions but at near-ties. Later steps may part at the first near-tie of a training query
    (a different prediction changes every later context), so they are not compared."""
    local, clear = local_quickstart
    served = run_experiment(quick(tmp_path, data_dir, "served", temperature=0.0, backend="llamacpp",
                                  server_url=llamacpp.url), progress=False)
    assert "@llamacpp" in served.run_dir.name and "@" not in local.run_dir.name
    assert len(served.records) == len(local.records) == 40
    pairs = list(zip(served.records[0].test.predictions, local.records[0].test.predictions, clear))
    assert sum(clear) >= 15 and all(a == b for a, b, c in pairs if c), pairs
    meta = json.loads((served.run_dir / "meta.json").read_text())
    assert meta["server"]["backend"] == "llamacpp" and meta["server"]["software"] == \
        open_route(quick(tmp_path, data_dir, "x", backend="llamacpp", server_url=llamacpp.url), lm)[0].software
    assert (served.steps["prompt_tokens"] > 0).all()
    if isinstance(llamacpp, LlamaServer):  # it reports its cache: the shared contexts came from it
        assert (served.steps["computed_tokens"] < served.steps["prompt_tokens"]).sum() > 30
    else:
        assert served.steps["computed_tokens"].isna().all()
    assert set(read(tmp_path / "served").tests["model_name"]) == {"smollm2-135m-instruct@llamacpp"}


def test_a_zero_shot_run_works_on_a_server(llama_server, data_dir, tmp_path):
    result = run_experiment(quick(tmp_path, data_dir, "zs", backend="llamacpp", server_url=llama_server.url,
                                  max_context_examples=0), progress=False)
    assert [r.step for r in result.records] == [0] and len(result.records[0].test.predictions) == 20


def test_a_run_stops_cleanly_when_the_server_dies_and_resumes_identically(lm, data_dir, tmp_path):
    """llama-server: its death is seen at once (a request in flight loses its connection) and stops the run."""
    server = start(LlamaServer(tmp_path / "server.log"))
    try:
        config = quick(tmp_path, data_dir, "out", train_k=30, test_every=10, test_k=10, backend="llamacpp",
                       server_url=server.url, request_retries=3, request_timeout=30.0)
        proc, done = kill_mid_run(server, config)
        assert proc.returncode == 2 and 5 <= done < 30, (proc.returncode, proc.stderr[-500:])
        assert "HTTP Request" not in proc.stderr  # one log line per request would bury the progress lines
        line = assert_one_line_error(proc, "rerun the same command to resume")
        # A request in flight sees the connection drop (the server no longer answers: stop now); a new one finds
        # the port closed (a few quick tries, in case it restarts).
        assert "no longer answers" in line or "cannot connect" in line and "(after 4 tries)" in line, line
        assert f"{done} steps are logged" in line
        start(server)
        resumed = run_experiment(config, progress=False)
        whole = run_experiment(dataclasses.replace(config, output_dir=str(tmp_path / "whole")), progress=False)
        assert strip_measurements(resumed.records) == strip_measurements(whole.records)
    finally:
        server.stop()


def test_a_wrong_server_url_is_one_line_before_any_folder_is_made(tmp_path, data_dir):
    url = f"http://127.0.0.1:{free_port()}"
    argv = [sys.executable, "-m", "icrl_lib", "run", "--backend", "llamacpp", "--server_url", url,
            "--task_name", "clinic150", "--data_dir", str(data_dir), "--output_dir", str(tmp_path / "out")]
    proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert_one_line_error(proc, "server_url:", "cannot connect", url)
    assert not list((tmp_path / "out").glob("*/steps.jsonl"))


def test_a_refused_request_names_the_servers_reason_and_what_to_change(llama_server, lm, data_dir, tmp_path):
    route, _ = open_route(quick(tmp_path, data_dir, "x", backend="llamacpp", server_url=llama_server.url), lm)
    with pytest.raises(ServerRefused, match=r"HTTP 400: Field 'temperature'.*type must be number"):
        route.client.post("/v1/completions", {"prompt": "x", "temperature": "hot", "max_tokens": 1})
    with pytest.raises(ServerRefused, match="type must be number"):  # the first failure stops the client's others
        route.client.post("/v1/completions", {"prompt": "x", "max_tokens": 1})
    with pytest.raises(ServerRefused, match=r"exceeds the available context size \(8192 tokens\).*; start the server "
                                            r"with a context as long as the run's prompts \(llama-server -c N"):
        route.make_client(retries=0).post("/v1/completions", {"prompt": [1] * 9000, "max_tokens": 1})


@pytest.fixture(scope="module")
def bos_gguf(tmp_path_factory):
    """The embedded GGUF with llama.cpp told to add a BOS to every text prompt. SmolLM2's BOS is ``<|im_start|>``,
    which its chat template writes at the start of every prompt: Llama-3's situation (the template writes
    ``<|begin_of_text|>`` and the GGUF asks for it too) on the embedded vocabulary."""
    path = tmp_path_factory.mktemp("bos") / "SmolLM2-bos.gguf"
    path.write_bytes(embedded_gguf_file().read_bytes())
    reader = gguf.GGUFReader(path, "r+")
    field = reader.fields["tokenizer.ggml.add_bos_token"]
    field.parts[field.data[0]][0] = True
    del reader
    return path


@pytest.mark.parametrize("kind", [LlamaServer, LlamaCppPythonServer])
def test_a_gguf_that_adds_bos_still_sees_one_bos(kind, bos_gguf, llama_server, lm, data_dir, tmp_path):
    """The server adds BOS to a text prompt; the model must still see the run's tokens: llama-server gets token ids
    (it adds nothing to those), llama-cpp-python gets the text less the template's BOS. Greedy predictions then equal
    those of the same server on the unmodified GGUF."""
    class BosServer(kind):
        def argv(self):
            argv = super().argv()
            argv[argv.index("--model") + 1] = str(bos_gguf)
            return argv

    plain = llama_server if kind is LlamaServer else None
    server = start(BosServer(tmp_path / "bos.log"))
    try:
        doubled = httpx.post(f"{server.url}/tokenize", json={"content": "<|im_start|>user", "add_special": True,
                                                            "parse_special": True}).json() if plain else \
            httpx.post(f"{server.url}/extras/tokenize", json={"input": "<|im_start|>user"}).json()
        assert doubled["tokens"][:2] == [1, 1]  # what a text prompt would give the model
        config = quick(tmp_path, data_dir, "x", backend="llamacpp", server_url=server.url, temperature=0.0)
        route, plan = open_route(config, lm)
        if plain is None:
            assert route.drop_prefix == "<|im_start|>" and "left to the server" in route.info.tokenization
            plain = start(LlamaCppPythonServer(tmp_path / "plain.log"))
        else:
            assert route.drop_prefix == "" and route.info.detail.startswith("prompts as token ids")
        reference, _ = open_route(dataclasses.replace(config, server_url=plain.url), lm)
        prompts, _ = make_prompts(lm, plan.task, n_context=8, n_queries=12)
        assert route.predictor().predict(prompts, 3) == reference.predictor().predict(prompts, 3)
    finally:
        server.stop()
        if plain is not None and plain is not llama_server:
            plain.stop()


def test_the_approximate_route_is_refused_unless_asked_and_named_in_runs_and_tables(llama_cpp_python, data_dir,
                                                                                 tmp_path):
    with pytest.raises(ValueError, match="backend: llamacpp-choice samples labels approximately .* set "
                                         "allow_approximate: true"):
        quick(tmp_path, data_dir, "x", backend="llamacpp-choice", server_url=llama_cpp_python.url)
    config = quick(tmp_path, data_dir, "approx", backend="llamacpp-choice", server_url=llama_cpp_python.url,
                   allow_approximate=True, train_k=4, test_every=2, test_k=10, temperature=0.0)
    result = run_experiment(config, progress=False)
    assert "@llamacpp-choice" in result.run_dir.name
    meta = json.loads((result.run_dir / "meta.json").read_text())
    assert meta["server"]["exact"] is False and meta["server"]["route"].startswith("APPROXIMATE")
    tests = read(tmp_path / "approx").tests
    assert set(tests["model_name"]) == {"smollm2-135m-instruct@llamacpp-choice"} and not tests["exact"].any()
    assert all(p in load_task("clinic150", str(data_dir)).labels for r in result.records if r.test
               for p in r.test.predictions)
