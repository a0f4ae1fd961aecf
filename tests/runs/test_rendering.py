"""Incremental rendering (no model): on chat templates of every kind a run may meet, the renderer returns exactly the
whole rendering at every call, reusing prefixes where the template is additive and rendering whole where it is not.

The templates are rendered by a stand-in tokenizer with jinja2, as transformers renders them (``messages``,
``add_generation_prompt``, ``bos_token``, ``eos_token``, ``raise_exception``).
"""
from __future__ import annotations

import random

import jinja2
import pytest

from icrl_lib.paper.prompts import Episode, build_messages
from icrl_lib.runs.rendering import IncrementalRenderer

CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
TEMPLATES = {
    "chatml": CHATML,
    # SmolLM2's: a default system turn when the first message is not one (the model without a system role).
    "default_system": "{% for m in messages %}{% if loop.first and messages[0]['role'] != 'system' %}<|sys|>default"
                      "<|end|>{% endif %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
                      "{% if add_generation_prompt %}<|assistant|>{% endif %}",
    # Llama-3's: a BOS, trimmed contents.
    "trim": "{{ bos_token }}{% for m in messages %}<|h|>{{ m['role'] }}<|/h|>\n\n{{ m['content'] | trim }}<|eot|>"
            "{% endfor %}{% if add_generation_prompt %}<|h|>assistant<|/h|>\n\n{% endif %}",
    # Mistral v3's: roles must alternate after the system turn, which goes into the LAST user turn.
    "mistral": "{% if messages[0]['role'] == 'system' %}{% set system = messages[0]['content'] %}"
               "{% set loop_messages = messages[1:] %}{% else %}{% set loop_messages = messages %}{% endif %}"
               "{{ bos_token }}{% for m in loop_messages %}"
               "{% if (m['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('alternate') }}{% endif %}"
               "{% if m['role'] == 'user' %}{% if loop.last and system is defined %}[INST] {{ system }}\n\n"
               "{{ m['content'] }}[/INST]{% else %}[INST] {{ m['content'] }}[/INST]{% endif %}"
               "{% else %} {{ m['content'] }}{{ eos_token }}{% endif %}{% endfor %}",
    # Llama-2's: the system text inside the first user turn.
    "first_user": "{% if messages[0]['role'] == 'system' %}{% set sys = messages[0]['content'] %}"
                  "{% set rest = messages[1:] %}{% else %}{% set rest = messages %}{% endif %}"
                  "{% for m in rest %}{% if m['role'] == 'user' %}[INST] {% if loop.first and sys is defined %}"
                  "<<SYS>>{{ sys }}<</SYS>> {% endif %}{{ m['content'] }} [/INST]{% else %} {{ m['content'] }} "
                  "</s>{% endif %}{% endfor %}",
    # Qwen3's kind: the last assistant turn after the last user turn gets an empty thinking block.
    "last_special": "{% for m in messages %}<|{{ m['role'] }}|>{% if loop.last and m['role'] == 'assistant' %}"
                    "<think></think>{% endif %}{{ m['content'] }}<|end|>{% endfor %}"
                    "{% if add_generation_prompt %}<|assistant|>{% endif %}",
}
NOT_ADDITIVE = {
    # Every turn says how many messages there are: no rendering is a prefix of a longer one's.
    "counts": "{% for m in messages %}<|{{ m['role'] }} {{ loop.length }}|>{{ m['content'] }}{% endfor %}",
    # A closing line after the last turn: a window's rendering is not a prefix of a longer list's.
    "trailer": CHATML + "<|done|>",
    # The second turn of a conversation is numbered differently from the later ones, beyond the probes' reach.
    "sevenths": "{% for m in messages %}{% if loop.index % 7 == 0 %}*{% endif %}<|{{ m['role'] }}|>"
                "{{ m['content'] }}{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}",
}


class JinjaTokenizer:
    """Renders a chat template as transformers' ``apply_chat_template(tokenize=False)`` does; counts the calls."""

    bos_token, eos_token = "<s>", "</s>"

    def __init__(self, template: str):
        env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = self._raise
        self.template, self.calls = env.from_string(template), 0

    @staticmethod
    def _raise(message: str):
        raise jinja2.TemplateError(message)

    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=False):
        assert tokenize is False
        self.calls += 1
        return self.template.render(messages=messages, add_generation_prompt=add_generation_prompt,
                                    bos_token=self.bos_token, eos_token=self.eos_token)


SHAPES = {  # build_messages keywords of the run kinds
    "icrl": dict(icrl=True), "icrl_no_system_role": dict(icrl=True, system_role=False),
    "omit_feedback": dict(icrl=True, omit_feedback=True), "icl": dict(icrl=False),
    "icl_no_system_role": dict(icrl=False, system_role=False),
}
EPISODES = [Episode(f"Query: question {i} ", f"label_{i % 5}", f"label_{(3 * i) % 5}", (i // 2) % 2)
            for i in range(60)]  # a trailing space: trimming templates must stay exact
EXEMPLARS = [Episode("Query: exemplar a", "label_0", "label_0", 1), Episode("Query: exemplar b", "label_1",
                                                                           "label_1", 1)]


def messages_of(shape: dict, episodes, query=None):
    return build_messages("System text.\n", episodes, query, prediction_prefix="Intent:", **shape)


def verification_cases(shape: dict) -> list:
    """As ContextBuilder makes them: growing contexts, one shrunk, one reordered, each with a prompt."""
    s = EPISODES[50:54]
    cases = []
    for eps in [s[:k] for k in range(5)] + [s[1:], [s[3], s[0], s[2]]]:
        cases += [(messages_of(shape, [*EXEMPLARS, *eps]), False), (messages_of(shape, [*EXEMPLARS, *eps], "Q?"), True)]
    return cases


def drive(renderer: IncrementalRenderer, shape: dict, strategy: str, steps: int = 40) -> None:
    """A run's renderings: per step one context and two prompts on it, each compared with the whole rendering."""
    rnd = random.Random(0)
    contexts: list[list[Episode]] = [[] for _ in range(3)]
    for step in range(steps):
        if strategy == "approximate":  # K contexts, each grows by appending
            k = rnd.randrange(3)
            if rnd.random() < 0.7:
                contexts[k].append(EPISODES[step])
            episodes = contexts[k]
        elif strategy == "naive":  # the last 8 episodes: grows, then slides
            episodes = EPISODES[max(0, step - 8):step]
        else:  # explorative: a random subset
            episodes = [e for e in EPISODES[:step] if rnd.random() < 0.5]
        episodes = [*EXEMPLARS, *episodes]
        context = messages_of(shape, episodes)
        assert renderer.render(context) == renderer.whole(context), step
        for query in ("Query: first?", "Query: second?"):
            prompt = messages_of(shape, episodes, query)
            assert renderer.render(prompt, generation=True, remember=False) == renderer.whole(prompt, True), step


@pytest.mark.parametrize("shape", sorted(SHAPES))
@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_every_rendering_equals_the_whole_rendering(name, shape):
    tokenizer = JinjaTokenizer(TEMPLATES[name])
    renderer = IncrementalRenderer(tokenizer, messages_of(SHAPES[shape], [])[0])
    additive = renderer.verify(verification_cases(SHAPES[shape]))
    for strategy in ("approximate", "naive", "explorative"):
        drive(renderer, SHAPES[shape], strategy)
    if name in ("mistral", "last_special"):  # additive for some shapes only: the last turn's text is special
        assert renderer.additive is additive
    else:
        assert additive and renderer.additive and renderer.reused > 0


@pytest.mark.parametrize("name", sorted(NOT_ADDITIVE))
def test_a_template_that_is_not_additive_is_rendered_whole(name):
    shape = SHAPES["icrl"]
    tokenizer = JinjaTokenizer(NOT_ADDITIVE[name])
    renderer = IncrementalRenderer(tokenizer, messages_of(shape, [])[0])
    assert renderer.verify(verification_cases(shape)) is False
    before = tokenizer.calls
    drive(renderer, shape, "approximate", steps=10)
    assert tokenizer.calls - before == 2 * 10 * 3  # each rendering whole, once for the renderer, once for the test
    assert renderer.reused == 0 and not renderer.entries


def test_the_first_renderings_after_verification_are_checked_whole():
    """A template that is additive on the verification's lists but not on a run's: the first checked rendering
    catches it, returns the whole rendering and renders whole from then on."""
    shape = SHAPES["icrl"]
    renderer = IncrementalRenderer(JinjaTokenizer(CHATML), messages_of(shape, [])[0])
    assert renderer.verify(verification_cases(shape))
    renderer.tokenizer = JinjaTokenizer(NOT_ADDITIVE["counts"])  # the template changes behind its back
    context = messages_of(shape, [*EXEMPLARS, *EPISODES[:3]])
    assert renderer.render(context) == renderer.whole(context)
    assert renderer.additive is False


def test_a_template_that_raises_on_a_window_is_rendered_whole():
    """Verified on lists where it renders, a template may still raise on a window later (here: a placeholder beside
    a run's fifth question): the renderer returns the whole rendering, as a whole rendering would have succeeded."""
    shape = SHAPES["icrl"]
    raising = ("{% set ns = namespace(probe=false) %}{% for m in messages %}{% if 'WINDOW-PROBE' in m['content'] %}"
               "{% set ns.probe = true %}{% endif %}{% endfor %}{% for m in messages %}"
               "{% if ns.probe and 'question 5 ' in m['content'] %}{{ raise_exception('no') }}{% endif %}"
               "<|{{ m['role'] }}|>{{ m['content'] }}{% endfor %}"
               "{% if add_generation_prompt %}<|assistant|>{% endif %}")
    renderer = IncrementalRenderer(JinjaTokenizer(raising), messages_of(shape, [])[0], checks=0)
    assert renderer.verify(verification_cases(shape))
    drive(renderer, shape, "approximate", steps=20)
    assert renderer.additive is False
