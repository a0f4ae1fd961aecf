"""Rendering contexts and prompts through the chat template without rendering again what an earlier call rendered.

A run renders its context and its prompts at every step, and for approximate ICRL a context is the one it rendered a
few steps before with one episode more: rendered whole, a 16K-token context costs about 8 ms of template work per
call. Chat templates are, in practice, additive: a list of messages renders as the rendering of its first messages
followed by the text each later message adds, and that text depends on the message and on its place only through the
roles before it (the first turns may be special, and some templates check that roles alternate). So the renderer keeps
the last contexts it rendered, with the length of their text at known message boundaries, and renders a new list as
the longest remembered prefix's text followed by the rest of the list rendered after a short *window*: the real first
message and placeholder turns with the roles (and the parity) of the messages the prefix holds.

It must be exact, so it is cautious:

* a prefix is reused only up to the boundary before a remembered list's last message (templates may render the last
  message specially), and the new list's last message is always rendered in place;
* the window's rendering must be a prefix of the window-plus-rest rendering, and a remembered boundary must end where
  the last message's own text begins, or the template is treated as not additive;
* :meth:`IncrementalRenderer.verify` compares incremental and whole renderings of lists shaped as the run's (the
  caller's samples: growing, shrinking, with and without the generation prompt), and the first ``checks`` renderings
  of the run are compared with whole renderings too.

Whatever fails, the renderer renders every list whole from then on, which is what it always returns anyway.
"""
from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any

from icrl_lib.engine.split_tokens import common_prefix_length
from icrl_lib.paper.prompts import render_messages

Message = dict[str, str]
Key = tuple[tuple[str, str], ...]

_ROLE_CONTENT = itemgetter("role", "content")
_PROBE = "WINDOW-PROBE-7d3a-{}"  # placeholder content; distinctive so that no template treats it as anything special


@dataclass(eq=False)  # identity: list.remove must not compare whole texts
class _Rendered:
    """A remembered rendering (no generation prompt): its messages and where its text stands at some boundaries."""

    key: Key
    text: str
    bounds: list[int] = field(default_factory=list)  # message counts b (sorted, each < len(key)) ...
    offsets: list[int] = field(default_factory=list)  # ... and the length of the rendering of key[:b]

    def add(self, b: int, offset: int) -> None:
        i = bisect.bisect_left(self.bounds, b)
        if i == len(self.bounds) or self.bounds[i] != b:
            self.bounds.insert(i, b)
            self.offsets.insert(i, offset)

    def usable(self, limit: int) -> tuple[int, int]:
        """(b, offset) of the largest boundary b <= limit, or (0, 0)."""
        i = bisect.bisect(self.bounds, limit) - 1
        return (self.bounds[i], self.offsets[i]) if i >= 0 else (0, 0)


class IncrementalRenderer:
    """Renders message lists as ``render_messages`` does, reusing remembered prefixes where the template allows.

    ``head``: the first message every rendered list starts with a message of the same role as (a context without
    episodes: the system turn, or the user turn that carries the system text); windows begin with it.
    ``max_entries``: renderings remembered (least recently used dropped), e.g. one per approximate-ICRL context.
    ``checks``: how many renderings after :meth:`verify` are also rendered whole and compared.
    """

    def __init__(self, tokenizer: Any, head: Message, max_entries: int = 16, checks: int = 2):
        self.tokenizer, self.head = tokenizer, dict(head)
        self.max_entries, self.checks = max_entries, checks
        self.additive: bool | None = None  # None: not verified yet; False: every list is rendered whole
        self.entries: list[_Rendered] = []  # most recently used last
        self.windows: dict[tuple[str, ...], tuple[list[Message], str]] = {}
        self.reused = 0  # renderings that reused a remembered prefix (tests and benchmarks read it)

    def whole(self, messages: Sequence[Message], generation: bool = False) -> str:
        """The template's rendering of ``messages`` (with the generation prompt if ``generation``)."""
        return render_messages(self.tokenizer, messages, generation)

    def render(self, messages: Sequence[Message], generation: bool = False, remember: bool = True) -> str:
        """The rendering of ``messages``; ``remember``: keep it (without a generation prompt) for later lists."""
        if not self.additive:
            return self.whole(messages, generation)
        try:
            text = self._incremental(messages, generation, remember and not generation)
        except Exception:  # noqa: BLE001 - a template that raises on a window: the whole list may still render
            text = None
        if self.checks > 0:
            self.checks -= 1
            if text is None or text != self.whole(messages, generation):
                text = None
        if text is None:
            self._give_up()
            return self.whole(messages, generation)
        return text

    def verify(self, cases: Iterable[tuple[Sequence[Message], bool]]) -> bool:
        """Render ``cases`` (message list, generation prompt?) in order both ways; additive if all agree.

        The cases should be shaped as the caller's lists: contexts growing by an episode, others not, and prompts on
        them. Remembered renderings are forgotten afterwards, so the run starts clean."""
        self.additive, checks, self.checks = True, self.checks, 0
        try:
            for messages, generation in cases:
                got = self._incremental(messages, generation, not generation)
                if got is None or got != self.whole(messages, generation):
                    self.additive = False
                    break
        except Exception:  # noqa: BLE001 - a template may raise on a window it finds odd: then render whole
            self.additive = False
        self.entries.clear()
        self.checks, self.reused = checks, 0
        return self.additive

    def _give_up(self) -> None:
        self.additive = False
        self.entries.clear()
        self.windows.clear()

    def _incremental(self, messages: Sequence[Message], generation: bool, remember: bool) -> str | None:
        """The rendering built from a remembered prefix and the rest rendered after a window (None: not additive)."""
        key: Key = tuple(map(_ROLE_CONTENT, messages))  # map + itemgetter: no Python loop over 1,000 messages
        n = len(key)
        if n == 0 or key[0][0] != self.head["role"]:
            return None
        entry, b, offset = self._longest_prefix(key)
        if b == 0:
            text = self.whole(messages, generation)
        else:
            window, window_text = self._window(key, b)
            rest = self.whole([*window, *messages[b:]], generation)
            if not rest.startswith(window_text):
                return None
            text = entry.text[:offset] + rest[len(window_text):]
            self.reused += 1
        if remember:
            if not self._remember(key, messages, text, entry, b, offset):
                return None
        elif entry is not None:
            self._touch(entry)
        return text

    def _longest_prefix(self, key: Key) -> tuple[_Rendered | None, int, int]:
        """The remembered rendering sharing the most messages with ``key`` at a boundary before its last message."""
        best: tuple[_Rendered | None, int, int] = (None, 0, 0)
        for entry in reversed(self.entries):
            if entry.bounds and entry.bounds[-1] > best[1]:
                b, offset = entry.usable(min(common_prefix_length(entry.key, key), len(key) - 1))
                if b > best[1]:
                    best = (entry, b, offset)
        return best

    def _window(self, key: Key, b: int) -> tuple[list[Message], str]:
        """Messages that stand in for the prefix ``key[:b]``, and their rendering: the head, then placeholders with the
        prefix's last roles, as many as make the window's length the prefix's (up to 3) or of the same parity (roles
        alternate, and templates may check it by position)."""
        k = b if b <= 3 else 2 + b % 2
        shape = (key[0][0], *(role for role, _ in key[b - k + 1:b]))
        if shape not in self.windows:
            window = [dict(self.head)] + [{"role": r, "content": _PROBE.format(i)} for i, r in enumerate(shape[1:])]
            self.windows[shape] = (window, self.whole(window))
        return self.windows[shape]

    def _remember(self, key: Key, messages: Sequence[Message], text: str, entry: _Rendered | None, b: int,
                  offset: int) -> bool:
        """Keep ``text`` with its boundaries: those of the prefix it reused, and the one before its last message,
        found by rendering the last message after a window (it must be where the text ends). False: not additive."""
        n = len(key)
        new = _Rendered(key, text)
        if entry is not None:  # sorted: the boundaries up to b are a slice (a context used for 10K steps has 10K)
            i = bisect.bisect(entry.bounds, b)
            new.bounds, new.offsets = entry.bounds[:i], entry.offsets[:i]
        if b:
            new.add(b, offset)
        if n > 1 and b != n - 1:
            window, window_text = self._window(key, n - 1)
            last = self.whole([*window, messages[-1]])
            if not last.startswith(window_text) or not text.endswith(last[len(window_text):]):
                return False
            new.add(n - 1, len(text) - (len(last) - len(window_text)))
        if entry is not None and entry.key == key:
            self.entries.remove(entry)
        self.entries.append(new)
        del self.entries[:-self.max_entries]
        return True

    def _touch(self, entry: _Rendered) -> None:
        self.entries.remove(entry)
        self.entries.append(entry)
