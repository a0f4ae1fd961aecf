"""The paper's chat prompts: system prompts, feedback sentences and the message list for one model call.

Everything here reproduces Monea et al. (2024) character for character, including the paper's grammar
("You are an useful assistant") and the trailing newline of the system prompt when the task has no description,
because the prompt text is part of what the experiments measure.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

ICRL_SYSTEM_PROMPT = (
    "You are an useful assistant. Answer the following questions. Feedback will indicate if you "
    "answered correctly. You must answer correctly, using previous feedback to make better predictions."
)
ICL_SYSTEM_PROMPT = "You are an useful assistant. Answer the following questions."

# Distinctive markers for probing a chat template; single letters could occur in the template's own text.
_SYSTEM_PROBE = "SYSTEM-PROBE-4f1c"
_USER_PROBE = "USER-PROBE-9b2e"


@dataclass(frozen=True)
class Episode:
    """One past interaction shown in a context.

    ``feedback`` is the reward SHOWN to the model (after any flipping), not the true reward: the prompt must say
    what the model was told.
    """

    input: str  # formatted input, e.g. "Query: how do I top up?"
    answer: str  # gold label (display name)
    prediction: str | None = None  # model's label (ICRL)
    feedback: int | None = None  # shown reward; None for ICL


def system_prompt(icrl: bool, description: str = "", template: str | None = None) -> str:
    """System text: the ICRL or ICL wording (or ``template``), a newline, then the task description.

    The paper formats ``"...{task_description}"`` with ``task_description = "\\n" + description``, so the text ends
    with a newline when the description is empty; we keep that byte for byte.
    """
    wording = template if template is not None else (ICRL_SYSTEM_PROMPT if icrl else ICL_SYSTEM_PROMPT)
    return f"{wording}\n{description}"


def feedback_text(prediction: str, positive: bool) -> str:
    """The paper's feedback sentence for ``prediction``."""
    if positive:
        return f"'{prediction}' is the correct answer! Good job!"
    return f"The answer '{prediction}' is wrong! You can do better!"


def _add_user(messages: list[dict[str, str]], text: str) -> None:
    # Chat templates expect alternating roles, so (as in the paper) a user turn that follows a user turn
    # (feedback, or the system text sent as a user turn) is merged into it.
    if messages and messages[-1]["role"] == "user":
        messages[-1] = {"role": "user", "content": messages[-1]["content"] + "\n\n" + text}
    else:
        messages.append({"role": "user", "content": text})


def build_messages(
    system: str,
    episodes: Sequence[Episode],
    query: str | None,
    *,
    icrl: bool,
    prediction_prefix: str,
    omit_feedback: bool = False,
    system_role: bool = True,
) -> list[dict[str, str]]:
    """Chat messages for a context of ``episodes`` followed by ``query`` (no query: the context alone).

    ICRL episodes become: user input, assistant ``"<prefix> <prediction>"``, user feedback sentence (dropped when
    ``omit_feedback``). ICL episodes become: user input, assistant ``"<prefix> <answer>"``. ``system_role=False``
    sends the system text as the first user turn, for templates without a system role.
    """
    messages: list[dict[str, str]] = [{"role": "system" if system_role else "user", "content": system}]
    for i, ep in enumerate(episodes):
        _add_user(messages, ep.input)
        if icrl:
            if ep.prediction is None:
                raise ValueError(f"episodes[{i}]: an ICRL episode needs a prediction, got None")
            messages.append({"role": "assistant", "content": f"{prediction_prefix} {ep.prediction}"})
            if not omit_feedback:
                if ep.feedback not in (0, 1):
                    raise ValueError(f"episodes[{i}]: feedback must be 0 or 1 for ICRL, got {ep.feedback!r}")
                _add_user(messages, feedback_text(ep.prediction, ep.feedback == 1))
        else:
            messages.append({"role": "assistant", "content": f"{prediction_prefix} {ep.answer}"})
    return messages if query is None else with_query(messages, query)


def with_query(messages: Sequence[dict[str, str]], query: str) -> list[dict[str, str]]:
    """The messages of a context (``build_messages`` without a query) followed by ``query``: what ``build_messages``
    gives with the query, without building the context's messages again (``messages`` is not changed)."""
    out = list(messages)
    _add_user(out, query)
    return out


def render_messages(tokenizer: Any, messages: Sequence[dict[str, str]], generation: bool = False) -> str:
    """The chat template's text of ``messages``, with the generation prompt if ``generation`` (the one template call
    of every rendering, whole or incremental)."""
    return tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=generation)


def render_context(tokenizer: Any, messages: Sequence[dict[str, str]]) -> str:
    """The text of ``messages`` without a query or generation prompt: the reusable prefix of every prompt built on
    the same context (the KV-cache reuse depends on exactly this rule)."""
    return render_messages(tokenizer, messages)


def render_prompt(tokenizer: Any, messages: Sequence[dict[str, str]], prediction_prefix: str) -> str:
    """Prompt text for the model: the chat template with the generation prompt, then ``prediction_prefix``.

    The model then completes ``" <label>"`` followed by its end-of-turn token.
    """
    check_prompt_messages(messages)
    return render_messages(tokenizer, messages, generation=True) + prediction_prefix


def check_prompt_messages(messages: Sequence[dict[str, str]]) -> None:
    """Refuse a prompt whose last message is not the user's query."""
    if not messages or messages[-1]["role"] != "user":
        raise ValueError("messages: the last message must be the user's query so the model answers it")


def supports_system_role(tokenizer: Any) -> bool:
    """True if the chat template renders a system turn (and puts it before the user turn).

    Some templates raise on a system message (e.g. Gemma) and some silently drop it; both count as no support.
    """
    messages = [{"role": "system", "content": _SYSTEM_PROBE}, {"role": "user", "content": _USER_PROBE}]
    try:
        text = tokenizer.apply_chat_template(messages, tokenize=False)
    except Exception:  # noqa: BLE001 - template errors come as jinja2/ValueError/TypeError depending on the model
        return False
    if not isinstance(text, str):
        return False
    s, u = text.find(_SYSTEM_PROBE), text.find(_USER_PROBE)
    return 0 <= s < u
