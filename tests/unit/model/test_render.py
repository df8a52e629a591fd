"""Segment spans come from the rendered text and the offset mapping, for several templates."""

import pytest

from anglerank.model.render import GAINRL_SYSTEM, Renderer, RenderError, question_from_messages
from helpers import CHATML, LLAMA3, NO_SYSTEM, make_tokenizer

Q = "Natalia sold 48 clips in April. How many clips did she sell?"


@pytest.fixture(scope="module", params=["chatml", "llama3", "nosystem"])
def tok(request):
    return make_tokenizer({"chatml": CHATML, "llama3": LLAMA3, "nosystem": NO_SYSTEM}[request.param])


def _decoded(tok, r):
    return (tok.decode(r.ids[: r.n_prefix]), tok.decode(r.ids[r.n_prefix: r.q_end]), tok.decode(r.ids[r.q_end:]))


@pytest.mark.parametrize("preset", ["none", "gainrl"])
def test_question_span_is_exactly_the_question(tok, preset):
    r = Renderer(tok, preset).render(Q)
    prefix, question, suffix = _decoded(tok, r)
    assert question.strip() == Q
    assert r.n_prefix > 0 and r.q_end < len(r.ids)
    assert Q not in prefix and Q not in suffix
    # ids are exactly the tokenisation of the rendered text (no hidden special tokens added)
    text, c0, c1 = Renderer(tok, preset).text_and_span(Q)
    assert text[c0:c1].strip() == Q
    assert tok(text, add_special_tokens=False)["input_ids"] == r.ids


def test_gainrl_preset_has_authors_messages(tok):
    r = Renderer(tok, "gainrl")
    text, _, _ = r.text_and_span(Q)
    assert "What is 2+2?" in text and "\\boxed{4}" in text
    assert GAINRL_SYSTEM.split("\n")[0] in text
    # the question is stripped, as the authors' script does
    assert r.text_and_span("  " + Q + "\n")[0] == text


def test_system_override_and_history_kept_as_prefix(tok):
    hist = [{"role": "system", "content": "Old system."}, {"role": "user", "content": "Hi there."},
            {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": Q}]
    msgs, q, note = question_from_messages(hist)
    assert q == Q and note is None
    r = Renderer(tok, "none", system="Be brief.").render(q, msgs)
    prefix, question, _ = _decoded(tok, r)
    assert "Be brief." in prefix and "Old system." not in prefix and "Hello!" in prefix
    assert question.strip() == Q


def test_trailing_assistant_turn_is_dropped_and_no_user_turn_noted():
    msgs, q, note = question_from_messages([{"role": "user", "content": "a b"}, {"role": "assistant", "content": "x"}])
    assert q == "a b" and len(msgs) == 1
    assert question_from_messages([{"role": "system", "content": "s"}])[2] == "no user message"


def test_plain_prefix_mode_and_missing_template():
    tok = make_tokenizer(None)
    with pytest.raises(RenderError, match="--prefix"):
        Renderer(tok)
    r = Renderer(tok, prefix="Question: ").render(Q)
    prefix, question, suffix = _decoded(tok, r)
    assert question.strip() == Q and suffix == "" and prefix.strip() == "Question:"


def test_empty_and_bad_questions_give_notes(tok):
    rr = Renderer(tok)
    assert rr.render(None).note == "null question"
    assert rr.render("   \n\t").note == "empty question"
    assert rr.render(42).note.startswith("question is int")


def test_truncation_keeps_prefix_and_flags(tok):
    long_q = " ".join(["apples"] * 500)
    r = Renderer(tok, max_length=64).render(long_q)
    assert len(r.ids) == 64 and r.truncated and r.q_end == 64 and r.n_prefix < 64


def test_unicode_questions_locate(tok):
    for q in ["日本語の問題です。答えは？", "emoji 🍎🍎 + 🍏 = ?", "مرحبا كم عدد", "e\u0301e\u0301 combining", "nul\x00inside"]:
        r = Renderer(tok).render(q)
        assert r.n_question >= 1, q
        assert _decoded(tok, r)[1].strip() == q.strip()


def test_real_smollm_chatml_spans(embedded_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(embedded_model_dir)
    r = Renderer(tok, "gainrl").render(Q)
    prefix, question, suffix = _decoded(tok, r)
    assert question == Q
    assert prefix.endswith("<|im_start|>user\n")
    assert suffix == "<|im_end|>\n<|im_start|>assistant\n"
