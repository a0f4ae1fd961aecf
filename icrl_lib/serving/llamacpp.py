"""Exact sampling on llama.cpp's servers (``llama-server``, or llama-cpp-python's): a grammar whose terminals are
token ids.

The grammar admits exactly the canonical token sequences of the labels (the trie's), not every tokenization that
spells a label, so at every step the server's grammar sampler leaves exactly the trie node's children. The end of
a label is llama.cpp's end-of-generation rule: allowed only where some label is complete. Every end-of-generation
token other than the model's end-of-turn is banned by a logit bias, so where one label is a prefix of another
(CLINIC150's ``order`` / ``order status``) the choice is between end-of-turn and the continuation, as in the trie.
Everything else is switched off by each server's own field names, so the server draws from softmax(z[children] / T)
whatever its command line or the GGUF's ``general.sampling.*`` defaults say:

- ``llama-server``: ``samplers: ["temperature"]`` (the chain is then logit bias, temperature, the seeded draw: no
  top-k/p, min-p, typical, XTC, DRY, top-n-sigma, penalties), ``mirostat: 0``, ``dynatemp_range: 0`` (and the
  samplers' own fields neutral besides). The prompt goes as the run's token ids, so the server adds no BOS of its
  own; it reports its cache (tokens computed). Its slots (``/props`` ``total_slots``) can serve queries at once
  (``server_concurrency``), but then its seeded draws no longer reproduce (its logits depend on what shares a
  batch), so by default requests go one at a time.
- llama-cpp-python: its names (``mirostat_mode``, ``top_k: 0``...), the prompt as text (its HTTP API takes no token
  ids); where its GGUF adds a BOS to every text and model_name's chat template writes one too, the template's is
  dropped from the text, so the model sees one, and the probe checks the ids the server will feed the model. One
  request at a time (one slot); no cache counters (tokens computed unknown).

Grammar sampling is rejection sampling from the whole chain, then a redraw under the grammar: exactly the
constrained law. Draws come from the server's generator, seeded per query from (seed + step, stream, query index):
the law is exact and reruns reproduce, but the label log-probability is not returned (recorded as unknown).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from icrl_lib.errors import UserError
from icrl_lib.serving.http import ServerClient
from icrl_lib.serving.sampled import ServerSampledPredictor
from icrl_lib.serving.server import ServerRoute
from icrl_lib.tasks.trie import LabelTrie

LLAMA_CPP_PYTHON_NEUTRAL: dict[str, Any] = {  # its defaults are top_k 40, top_p 0.95, min_p 0.05
    "top_k": 0, "top_p": 1.0, "min_p": 0.0, "typical_p": 1.0, "repeat_penalty": 1.0, "presence_penalty": 0.0,
    "frequency_penalty": 0.0, "mirostat_mode": 0, "stream": False}
LLAMA_SERVER_NEUTRAL: dict[str, Any] = {  # tools/server/server-schema.cpp: the fields a request may set
    "samplers": ["temperature"], "mirostat": 0, "dynatemp_range": 0.0, "top_k": 0, "top_p": 1.0, "min_p": 0.0,
    "typical_p": 1.0, "top_n_sigma": -1.0, "xtc_probability": 0.0, "dry_multiplier": 0.0, "repeat_penalty": 1.0,
    "presence_penalty": 0.0, "frequency_penalty": 0.0, "n_probs": 0, "cache_prompt": True, "stream": False}
BANNED = -1e9  # added to a banned token's logit: exp() of it is exactly 0 in float32


def token_grammar(trie: LabelTrie) -> str:
    """GBNF that matches the labels' token sequences without their end-of-turn (``<[id]>`` terminals)."""
    alternatives = sorted({" ".join(f"<[{t}]>" for t in seq[:-1]) for seq in trie.sequences})
    return "root ::= " + " | ".join(f"( {a} )" for a in alternatives)


def string_grammar(labels) -> str:
    """GBNF that matches the labels as strings (`` <label>``): any tokenization that spells one is allowed. This is
    the approximate route (``llamacpp-choice``), what a server's guided choice does."""
    def quoted(text: str) -> str:
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return "root ::= " + " | ".join(quoted(" " + label) for label in labels)


def llama_cpp_python(client: ServerClient) -> str | None:
    """``llama-cpp-python <version>`` if that is the server (its OpenAPI title says so), else None."""
    info = (client.try_get("/openapi.json") or {}).get("info") or {}
    return f"llama-cpp-python {info.get('version', '?')}" if "llama" in str(info.get("title", "")).lower() else None


def banned_end_tokens(facts) -> list[int]:
    """Special tokens other than the end-of-turn (``facts``: the run's ``ModelFacts``): a server may end generation
    on any of them, the trie never does."""
    tok = facts.tokenizer
    special = set(tok.all_special_ids) | {i for i, t in tok.added_tokens_decoder.items() if t.special}
    return sorted(special - {facts.eot_id})


class GrammarPredictor(ServerSampledPredictor):
    """Label prediction on a llama.cpp server with a token-id grammar (the server samples). ``llama_server``: the
    prompt as token ids with llama-server's sampler fields, ``concurrency`` requests at once; else llama-cpp-python's
    fields and the prompt as text, less ``drop_prefix`` (a BOS the server adds itself)."""

    unlabelled_hint = ": does the server support token-id grammars (llama.cpp 2025 or later)?"
    spaced = True
    what = "llama.cpp /v1/completions"

    def __init__(self, client: ServerClient, model: str, encode_batch, trie: LabelTrie, temperature: float,
                 banned: Sequence[int], exact: bool = True, llama_server: bool = False, concurrency: int = 1,
                 drop_prefix: str = ""):
        super().__init__(client, model, trie.labels, temperature, encode_batch, concurrency)
        self.grammar = token_grammar(trie) if exact else string_grammar(trie.labels)
        # A label spelled by other tokens may be longer: room for one token per character, then the end.
        self.max_tokens = max(len(s) for s in trie.sequences) if exact else max(len(x) for x in trie.labels) + 2
        self.bias = {str(t): BANNED for t in banned}
        self.send_ids, self.neutral = llama_server, LLAMA_SERVER_NEUTRAL if llama_server else LLAMA_CPP_PYTHON_NEUTRAL
        self.drop_prefix = drop_prefix

    def request(self, prompt, seed: int) -> dict[str, Any]:
        """The body of one ``/v1/completions`` request (``prompt``: token ids, or the rendered text)."""
        if isinstance(prompt, str):
            prompt = prompt.removeprefix(self.drop_prefix)  # "" removes nothing
        return {"model": self.model, "prompt": prompt, "max_tokens": self.max_tokens, "temperature": self.temperature,
                "seed": seed, "grammar": self.grammar, "logit_bias": self.bias, **self.neutral}


class LlamaCppRoute(ServerRoute):
    """The ``llamacpp`` routes on either llama.cpp server: which one answers decides the prompt form and the fields."""

    llama_server = False  # set by the probe: llama-server (token ids, its sampler names, slots) or llama-cpp-python
    slots = 1
    drop_prefix = ""

    def identify(self, client: ServerClient) -> str:
        props = client.try_get("/props")
        if isinstance(props, dict) and props.get("build_info"):
            self.llama_server, self.sends_ids = True, True
            self.slots = max(1, int(props.get("total_slots") or 1))
            self._check_window(props)
            return f"llama.cpp llama-server {props['build_info']}"
        self.sends_ids = False
        return llama_cpp_python(client) or "llama.cpp (version not reported)"

    def _check_window(self, props: dict[str, Any]) -> None:
        """A run whose contexts fill the model's window needs a slot that long (llama-server: ``-c``)."""
        c, slot = self.config, (props.get("default_generation_settings") or {}).get("n_ctx")
        window = c.max_window_tokens or self.plan.model.context_window
        if c.max_context_examples is None and isinstance(slot, int) and 0 < slot < window:
            raise UserError(f"server_url: llama-server's slots hold {slot} tokens, but this run fills contexts up to "
                            f"{window}: start it with -c {window} (or more), or set max_window_tokens: {slot}")

    def tokenize(self, client: ServerClient, text: str) -> list[int]:
        if self.llama_server:  # the vocabulary: the run's ids are sent as they are
            answer = client.post("/tokenize", {"content": text, "add_special": False, "parse_special": True})
            tokens = client.read(answer, "tokens", "llama-server /tokenize")
            return [t if isinstance(t, int) else t["id"] for t in tokens]
        answer = client.try_post("/extras/tokenize", {"input": text})  # as a text prompt is fed: BOS per the GGUF
        if answer is None:
            raise UserError(f"server_url: {self.url} has neither llama-server's /tokenize nor llama-cpp-python's "
                            "/extras/tokenize: is it a llama.cpp server?")
        return client.read(answer, "tokens", "llama-cpp-python /extras/tokenize")

    def check(self, client: ServerClient, samples: list[str]) -> str:
        if not self.llama_server and samples:
            self._reconcile_bos(client, samples[0])
        summary = super().check(client, samples)
        return summary + (f" (the template's {self.drop_prefix!r} is left to the server, which adds its own BOS)"
                          if self.drop_prefix else "")

    def seen_ids(self, client: ServerClient, text: str) -> list[int]:
        return self.tokenize(client, text.removeprefix(self.drop_prefix))

    def _reconcile_bos(self, client: ServerClient, text: str) -> None:
        """A text prompt gets the server's BOS where its GGUF asks for one: if model_name's template writes that BOS
        too, drop the template's, so the model sees one (the parity check then compares the rest)."""
        tok, ours = self.plan.model.tokenizer, self.plan.model.encode(text)
        bos = getattr(tok, "bos_token", None)
        if not bos or not ours or ours[0] != tok.bos_token_id or not text.startswith(bos):
            return
        theirs = self.tokenize(client, text)
        if theirs[:2] == [ours[0], ours[0]] and theirs[1:] == ours:
            self.drop_prefix = bos

    def refused_hint(self, status: int, message: str) -> str:
        if "context" in message.lower() and ("exceed" in message.lower() or "size" in message.lower()):
            return "start the server with a context as long as the run's prompts (llama-server -c N, " \
                   "llama-cpp-python --n_ctx N), or set max_context_examples lower"
        return ""

    @property
    def concurrency(self) -> int:
        """Requests at once: one unless the config asks for more (up to the server's slots). The server batches
        the slots' tokens, and its logits, hence its seeded draws, depend on what shares a batch: measured, 15 of
        40 draws changed between two identical rounds at 4 requests at once, none at one."""
        return min(self.config.server_concurrency or 1, self.slots)

    @property
    def detail(self) -> str:  # type: ignore[override]
        if self.llama_server:
            at_once = (f"{self.concurrency} of {self.slots} slots at once (seeded draws do not reproduce)"
                       if self.concurrency > 1 else f"one request at a time ({self.slots} slots)")
            return f"prompts as token ids; samplers: [temperature]; {at_once}"
        return "prompts as text" + (f" without the template's {self.drop_prefix!r}" if self.drop_prefix else "") + \
            "; llama-cpp-python's sampler fields; one request at a time"

    def predictor(self, lm: Any = None) -> GrammarPredictor:
        return GrammarPredictor(self.client, self.model, self.plan.model.encode_batch, self.plan.trie,
                                self.config.temperature, banned_end_tokens(self.plan.model), exact=self.entry.exact,
                                llama_server=self.llama_server, concurrency=self.concurrency,
                                drop_prefix=self.drop_prefix)
