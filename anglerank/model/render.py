"""Turn a question (or chat messages) into token ids plus prefix/question token spans.

Segment boundaries are found from the rendered text, never from hard-coded token
counts: the question is rendered once with a sentinel in its place to learn exactly
which characters the template puts before and after it, and the tokenizer's offset
mapping then maps those characters to tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

from anglerank.errors import UserError

PRESETS = ("none", "gainrl")

# The authors' scoring prompt (docs/method.md, "What the released code does"), as data.
GAINRL_SYSTEM = (
    "A conversation between User and Assistant. The user asks a question, and the Assistant solves it.\n"
    "The assistant first thinks about the reasoning process in the mind and then provides the user with "
    "the answer. Let's think step by step and output the final answer within \\boxed{}."
)
GAINRL_SHOT = [
    {"role": "user", "content": "What is 2+2?"},
    {
        "role": "assistant",
        "content": "To calculate 2+2, we simply add the numbers together: 2 + 2 = 4. The answer is \\boxed{4}",
    },
]

_SENTINEL = "\u2063QSENTINEL\u2063"


class RenderError(UserError):
    """A configuration problem that affects every row (e.g. no chat template)."""


@dataclass
class Rendered:
    ids: list[int]
    n_prefix: int  # tokens [0, n_prefix) are the prefix P
    q_end: int  # tokens [n_prefix, q_end) are the question Q; the rest is suffix
    truncated: bool = False
    note: str | None = None

    @property
    def n_question(self) -> int:
        return max(0, self.q_end - self.n_prefix)


def _empty(note: str) -> Rendered:
    return Rendered([], 0, 0, False, note)


def question_from_messages(messages) -> tuple[list[dict] | None, str | None, str | None]:
    """Split a message list into (messages up to the last user turn, question, note)."""
    if not isinstance(messages, (list, tuple)):
        return None, None, "prompt is not a list of messages"
    msgs = []
    for m in messages:
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            return None, None, "message without role/content"
        msgs.append({"role": m["role"], "content": m["content"]})
    last_user = max((i for i, m in enumerate(msgs) if m["role"] == "user"), default=None)
    if last_user is None:
        return None, None, "no user message"
    return msgs[: last_user + 1], msgs[last_user]["content"], None


class Renderer:
    """Renders rows for one tokenizer and one prompt configuration."""

    def __init__(self, tokenizer, preset: str = "none", system: str | None = None,
                 prefix: str | None = None, max_length: int = 4096):
        if preset not in PRESETS:
            raise RenderError(f"unknown preset {preset!r}; choose from {', '.join(PRESETS)}")
        if max_length < 2:
            raise RenderError("--max-length must be at least 2")
        self.tok = tokenizer
        self.preset = preset
        self.system = system
        self.prefix = prefix
        self.max_length = max_length
        self.has_template = bool(getattr(tokenizer, "chat_template", None))
        if prefix is None and not self.has_template:
            raise RenderError(
                "the model's tokenizer has no chat template; pass --prefix TEXT to score plain text "
                "(prefix + question)"
            )
        if prefix is not None and preset != "none":
            raise RenderError("--prefix (plain-text mode) cannot be combined with --preset " + preset)
        if not getattr(tokenizer, "is_fast", False):
            raise RenderError("a fast tokenizer (with offset mapping) is required")

    # -- message construction -------------------------------------------------
    def _messages(self, question: str, history: list[dict] | None) -> list[dict]:
        if self.preset == "gainrl":
            system = self.system if self.system is not None else GAINRL_SYSTEM
            return [{"role": "system", "content": system}, *GAINRL_SHOT,
                    {"role": "user", "content": question.strip()}]
        msgs = list(history[:-1]) if history else []
        if self.system is not None:
            msgs = [m for m in msgs if m["role"] != "system"]
            msgs.insert(0, {"role": "system", "content": self.system})
        msgs.append({"role": "user", "content": question})
        return msgs

    def _template(self, msgs: list[dict]) -> str:
        return self.tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)

    def text_and_span(self, question: str, history: list[dict] | None = None) -> tuple[str, int, int]:
        """Rendered text and the character span [start, end) of the question in it."""
        if self.prefix is not None:
            return self.prefix + question, len(self.prefix), len(self.prefix) + len(question)
        msgs = self._messages(question, history)
        text = self._template(msgs)
        probe = [dict(m) for m in msgs]
        probe[-1]["content"] = _SENTINEL
        shell = self._template(probe)
        pos = shell.rfind(_SENTINEL)
        if pos >= 0:
            before, after = shell[:pos], shell[pos + len(_SENTINEL):]
            if text.startswith(before) and text.endswith(after) and len(before) + len(after) <= len(text):
                return text, len(before), len(text) - len(after)
        # Template output depends on the content beyond substitution: fall back to search.
        needle = question.strip() if self.preset == "gainrl" else question
        start = text.rfind(needle)
        if start < 0 and needle.strip():
            needle = needle.strip()
            start = text.rfind(needle)
        if start < 0:
            raise RenderError("question not found in the rendered prompt")
        return text, start, start + len(needle)

    # -- tokens ------------------------------------------------------------------
    def render(self, question, history: list[dict] | None = None) -> Rendered:
        if question is None:
            return _empty("null question")
        if not isinstance(question, str):
            return _empty(f"question is {type(question).__name__}, not text")
        if not question.strip():
            return _empty("empty question")
        try:
            text, c0, c1 = self.text_and_span(question, history)
        except Exception as exc:  # a template raising on one row must not stop the run
            return _empty(f"render failed: {exc}".splitlines()[0][:200])
        enc = self.tok(text, add_special_tokens=self.prefix is not None, return_offsets_mapping=True)
        ids, offsets = enc["input_ids"], enc["offset_mapping"]
        q_tokens = [i for i, (s, e) in enumerate(offsets) if e > s and s < c1 and e > c0]
        if not q_tokens:
            return Rendered(ids, len(ids), len(ids), False, "question has no tokens")
        n_prefix, q_end = q_tokens[0], q_tokens[-1] + 1
        truncated = len(ids) > self.max_length
        if truncated:
            ids = ids[: self.max_length]
            q_end = min(q_end, self.max_length)
            n_prefix = min(n_prefix, self.max_length)
        return Rendered(ids, n_prefix, q_end, truncated, "truncated" if truncated else None)
