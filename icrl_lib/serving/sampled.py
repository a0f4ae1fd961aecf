"""Labels drawn by the server: one request per query, the label read from the answer's text.

The common part of every route where the server samples (llama.cpp's token grammar, the guided-choice and enum
routes): per-query seeds derived as the local draws are, requests sent one after another (a single-slot server whose
prefix cache keeps the previous request) or concurrently (a batching server), the answer checked to be a label, and
tokens counted from what the server reports, never guessed.
"""
from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from icrl_lib.engine.draws import Prediction, TokenCounter
from icrl_lib.errors import ServerRefused
from icrl_lib.serving.http import ServerClient
from icrl_lib.serving.nodewalk import server_cache_report

# Sampling fields that switch every filter and penalty off, by the names vLLM and SGLang share (top_k -1 = off).
NEUTRAL: dict[str, Any] = {"top_p": 1.0, "top_k": -1, "min_p": 0.0, "presence_penalty": 0.0, "frequency_penalty": 0.0,
                           "repetition_penalty": 1.0}
Prompt = Any  # a rendered prompt (str) for completion routes, a message list for chat routes


def query_seed(seed: int, stream: int, index: int) -> int:
    """The server-side seed of one query: derived from (seed + step, stream, query index), as the local draws are;
    below 2**32 - 1, which llama.cpp reads as "random"."""
    state = np.random.SeedSequence([seed & 0xFFFFFFFFFFFFFFFF, stream, index]).generate_state(1)[0]
    return int(state) % 0xFFFFFFFF


class ServerSampledPredictor:
    """Base of the routes where the server draws the label. Subclasses say the request, where the answer's text is,
    and what the server reports of its token use (:meth:`usage`)."""

    path = "/v1/completions"
    what = "the server"  # names the server and route in errors about its answers
    send_ids = False  # True: ``request`` gets the prompt's token ids (the run's tokenization), not its text
    chat = False  # True: prompts are message lists, and the server applies the model's chat template itself
    spaced = False  # True: the answer continues the prompt's prediction prefix, so it reads " <label>"

    def __init__(self, client: ServerClient, model: str, labels: Sequence[str], temperature: float,
                 encode_batch=None, concurrency: int = 1):
        """``encode_batch``: the run's tokenizer, to count prompt tokens on the client (None: the server counts)."""
        self.client, self.model, self.labels = client, model, tuple(labels)
        self.temperature, self.encode_batch, self.concurrency = float(temperature), encode_batch, concurrency
        self.tokens = TokenCounter(known=True)

    def request(self, prompt: Prompt, seed: int) -> dict[str, Any]:
        """The body of one query's request."""
        raise NotImplementedError

    def text(self, answer: Any) -> str | None:
        """The label as the answer spells it (None: the answer holds no finished text); here an OpenAI
        ``/v1/completions`` answer (llama.cpp's servers, vLLM)."""
        choice = self.client.read(answer, "choices.0", self.what)
        return self.client.read(choice, "text", self.what) if choice.get("finish_reason") == "stop" else None

    def label(self, text: str) -> str | None:
        """The label ``text`` names (None: not a label): after the prediction prefix a completion route's answer is
        `` <label>`` (``spaced``); a chat route's is the bare label."""
        if self.spaced:
            if not text.startswith(" "):
                return None
            text = text[1:]
        return text if text in self.labels else None

    def usage(self, answer: Any) -> tuple[int | None, int | None, int]:
        """(prompt tokens, of them served from the server's cache, generated tokens); None where not reported. Here
        an OpenAI answer's ``usage`` (cached tokens: llama-server; vLLM with --enable-prompt-tokens-details)."""
        usage = answer.get("usage") or {}
        cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens")
        return usage.get("prompt_tokens"), cached, int(usage.get("completion_tokens") or 0)

    def predict(self, prompts: Sequence[Prompt], seed: int, stream: int = 0,
                context: str | None = None) -> list[Prediction]:
        """One label per prompt, each drawn by the server with a seed of its own (``context`` is not needed)."""
        ids = self.encode_batch(prompts) if self.encode_batch is not None else None
        inputs = ids if self.send_ids else prompts
        bodies = [self.request(x, query_seed(seed, stream, i)) for i, x in enumerate(inputs)]
        path = self.path.format(model=self.model)
        if self.concurrency > 1 and len(bodies) > 1:
            with ThreadPoolExecutor(min(self.concurrency, len(bodies))) as pool:
                answers = list(pool.map(lambda body: self.client.post(path, body), bodies))
        else:
            answers = [self.client.post(path, body) for body in bodies]
        if ids is not None:
            self.tokens.prompt += sum(len(x) for x in ids)
        out = []
        for answer in answers:
            text = self.text(answer)
            label = None if text is None else self.label(text)
            if label is None:
                raise ServerRefused(f"{self.model} answered {text!r}, not one of the {len(self.labels)} labels"
                                    f"{self.unlabelled_hint}")
            self._count(answer)
            out.append(Prediction(label, None))
        return out

    unlabelled_hint = ""  # what a user can check when the server answered something else

    def _count(self, answer: Any) -> None:
        prompt, cached, generated = self.usage(answer)
        self.tokens.generated += generated
        if self.encode_batch is None:
            self.tokens.prompt += prompt or 0
        if prompt is None or cached is None:
            self.tokens.known = False  # the server does not say what its cache served: unknown, not guessed
        else:
            self.tokens.computed += prompt - cached

    def cache_report(self) -> dict[str, int]:
        return server_cache_report()


class GuidedChoicePredictor(ServerSampledPredictor):
    """A completion route where the server's structured-output engine picks among the label strings (vLLM's guided
    choice, SGLang's regex): the run's prompt as token ids, the label read back as the text `` <label>``."""

    send_ids = spaced = True

    def __init__(self, client: ServerClient, model: str, encode_batch, labels: Sequence[str], temperature: float,
                 concurrency: int = 64):
        super().__init__(client, model, labels, temperature, encode_batch, concurrency)
        self.max_tokens = max(len(x) for x in self.labels) + 2  # one token per character at worst, then the end
