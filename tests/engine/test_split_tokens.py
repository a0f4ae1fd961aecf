"""Split tokenization (engine.split_tokens): a test set's shared head tokenized once gives exactly the token ids of
every whole prompt, on the five tasks' whole test sets; where head + tail would differ it tokenizes whole."""
from __future__ import annotations

import pytest

from icrl_lib.engine.models import model_facts, resolve_model
from icrl_lib.engine.split_tokens import PromptTokenizer, special_strings, split_point
from icrl_lib.paper.prompts import Episode, build_messages, render_context, render_prompt, system_prompt
from icrl_lib.tasks.task import load_task

TASKS = ("banking77", "clinic150", "nlu", "trec_coarse", "trec_fine")


@pytest.fixture(scope="module")
def tokenizer():
    return model_facts("smollm2-135m-instruct", resolve_model("smollm2-135m-instruct")).tokenizer


def prompts_of(tokenizer, task, queries, episodes=6):
    """The run's prompts for ``queries`` on one ICRL context with both feedback sentences."""
    train = task.sample_train(episodes, seed=3)[1]
    shown = [Episode(task.format_input(ex), task.answer(ex), task.answer(ex), i % 2) for i, ex in enumerate(train)]
    system = system_prompt(True, task.description)
    return [render_prompt(tokenizer, build_messages(system, shown, task.format_input(ex), icrl=True,
                                                    prediction_prefix=task.prediction_prefix),
                          task.prediction_prefix) for ex in queries]


@pytest.mark.data
@pytest.mark.parametrize("name", TASKS)
def test_split_tokenization_gives_every_test_prompts_own_token_ids(tokenizer, data_dir, name):
    task = load_task(name, str(data_dir))
    prompts = prompts_of(tokenizer, task, task.test)
    encoded = PromptTokenizer(tokenizer).shared(prompts)
    assert encoded.split and len(encoded.head) > 100  # the context really was tokenized once
    assert encoded.full() == tokenizer(prompts, add_special_tokens=False)["input_ids"]
    assert encoded.total == sum(len(x) for x in encoded.full())


class PrependsAMarker:
    """A tokenizer that marks the start of every text it is given (as SentencePiece's leading space does): the
    head + tail of a split prompt then differ from the prompt's own ids."""

    def __init__(self, inner):
        self.inner = inner
        self.all_special_tokens, self.added_tokens_decoder = inner.all_special_tokens, inner.added_tokens_decoder

    def __call__(self, texts, add_special_tokens=False):
        return {"input_ids": [[0] + x for x in self.inner(texts, add_special_tokens=False)["input_ids"]]}


@pytest.mark.data
def test_a_split_that_would_change_the_ids_falls_back_to_whole_prompts(tokenizer, data_dir):
    task = load_task("trec_coarse", str(data_dir))
    prompts = prompts_of(tokenizer, task, task.test[:20])
    marked = PrependsAMarker(tokenizer)
    encoded = PromptTokenizer(marked).shared(prompts)
    assert not encoded.split and encoded.head == []
    assert encoded.full() == marked(prompts)["input_ids"]


def test_the_split_falls_after_the_last_special_token_of_the_shared_text(tokenizer):
    specials = special_strings(tokenizer)
    assert "<|im_start|>" in specials and "<|im_end|>" in specials
    a = "<|im_start|>user\nfeedback\n\nQuery: a<|im_end|>"
    b = "<|im_start|>user\nfeedback\n\nQuery: b<|im_end|>"
    assert split_point([a, b], specials) == len("<|im_start|>")
    assert split_point(["<|im_start|>x", "<|im_start|>"], specials) == 0  # every prompt keeps a character of its own
    assert split_point(["plain a", "plain b"], specials) == 0
    assert not PromptTokenizer(tokenizer).shared([a]).split  # a lone prompt: nothing to share


class Counting:
    """The tokenizer, counting the characters it is given."""

    def __init__(self, inner):
        self.inner, self.chars = inner, 0
        self.all_special_tokens, self.added_tokens_decoder = inner.all_special_tokens, inner.added_tokens_decoder

    def __call__(self, texts, add_special_tokens=False):
        self.chars += sum(len(t) for t in texts)
        return self.inner(texts, add_special_tokens=add_special_tokens)


@pytest.mark.data
def test_a_growing_context_is_tokenized_incrementally_with_the_same_ids(tokenizer, data_dir):
    """Approximate ICRL's contexts grow by one episode: each training prompt's ids equal its whole tokenization, and
    after the first step only the new text is tokenized (plus the prompt's and context's short tails)."""
    task = load_task("banking77", str(data_dir))
    train = task.sample_train(60, seed=4)[1]
    system = system_prompt(True, task.description)
    counting = Counting(tokenizer)
    prompts = PromptTokenizer(counting)
    shown: list[Episode] = []
    for i, ex in enumerate(train):
        query = task.format_input(ex)
        if shown:
            ctx = render_context(tokenizer, build_messages(system, shown, None, icrl=True,
                                                           prediction_prefix=task.prediction_prefix))
            prompt = render_prompt(tokenizer, build_messages(system, shown, query, icrl=True,
                                                             prediction_prefix=task.prediction_prefix),
                                   task.prediction_prefix)
            before = counting.chars
            ids, shared = prompts.with_context(prompt, ctx)
            whole, context_ids = tokenizer([prompt, ctx], add_special_tokens=False)["input_ids"]
            assert ids == whole and ids[:shared] == context_ids[:shared] and shared >= len(context_ids) - 8
            if i > 2:  # the head came from the cache: the new episode and two short tails, not the whole context
                assert counting.chars - before < 1000
        shown.append(Episode(query, task.answer(ex), task.answer(ex), i % 2))
    assert prompts.exact is True and len(prompt) > 10_000  # 1,000 characters: a tenth of the last prompt at most


def test_the_fast_split_point_is_the_reference_one():
    """common_prefix_text and last_special_end (slices compared in C, the tail searched first) give what
    os.path.commonprefix and a search of the whole text give, on texts with special tokens near and far from the
    end, straddling the searched tail, and none."""
    import os
    import random

    from icrl_lib.engine.split_tokens import common_prefix_text, last_special_end

    def reference(texts, specials):
        common = os.path.commonprefix(list(texts))[:min(len(t) for t in texts) - 1]
        return max((common.rfind(s) + len(s) for s in specials if common.rfind(s) >= 0), default=0)

    rnd = random.Random(0)
    specials = ("<|im_start|>", "<|im_end|>", "<s>")
    for _ in range(300):
        words = [rnd.choice(["ab", "c ", "\n", *specials]) for _ in range(rnd.choice([3, 40, 3000]))]
        base = "".join(words)
        texts = [base[:rnd.randrange(len(base) + 1)] + rnd.choice(["", "x", "<|im_end|>y", "z" * 5000])
                 for _ in range(rnd.choice([1, 2, 5]))]
        if min(len(t) for t in texts) == 0:
            continue
        assert common_prefix_text(texts) == len(os.path.commonprefix(texts))
        assert split_point(texts, specials) == reference(texts, specials)
        for window in (1, 7, 50):
            assert last_special_end(base, specials, window) == reference([base + "!"], specials)


def test_common_prefix_length_of_token_sequences_texts_and_messages():
    import random

    from icrl_lib.engine.split_tokens import common_prefix_length

    def reference(a, b):
        n = 0
        while n < min(len(a), len(b)) and a[n] == b[n]:
            n += 1
        return n

    a = list(range(1000))
    assert common_prefix_length(a, a + [5]) == 1000 and common_prefix_length([], a) == 0
    assert common_prefix_length(tuple(a), a) == 1000  # a tuple and a list of the same tokens
    rnd = random.Random(0)
    for _ in range(300):
        n = rnd.choice([0, 1, 63, 64, 65, 200, 5000])
        x = [rnd.randrange(3) for _ in range(n)]
        y = x[:rnd.randrange(n + 1)] + [rnd.randrange(3) for _ in range(rnd.randrange(100))]
        assert common_prefix_length(x, y) == reference(x, y)
        assert common_prefix_length("".join(map(str, x)), "".join(map(str, y))) == reference(x, y)
        messages = tuple(("user", str(t)) for t in x), tuple(("user", str(t)) for t in y)
        assert common_prefix_length(*messages) == reference(x, y)
