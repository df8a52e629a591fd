"""anglerank.model.generation: the one generate path of train and validate.

Sampling from an explicit generator (reproducible, the caller's global RNG left
alone), the global RNG without one, left padding and the cut at the first EOS.
"""

from __future__ import annotations

import pytest
import torch

from anglerank.model import generation
from anglerank.model.loading import ModelError


pytestmark = pytest.mark.usefixtures("one_thread")


def _prompts(tok):
    return [tok("What is 2+2?")["input_ids"], tok("How many apples does Tom have?")["input_ids"]] * 2


def _sample(model, tok, generator=None):
    return generation.generate(model, tok, _prompts(tok), max_new_tokens=6, temperature=1.0, batch_size=3,
                               generator=generator)


def test_explicit_generator_is_reproducible_and_leaves_the_global_rng(tiny_model, tiny_tokenizer):
    state = torch.get_rng_state()
    a = _sample(tiny_model, tiny_tokenizer, torch.Generator().manual_seed(3))
    assert torch.equal(torch.get_rng_state(), state)  # nothing drawn from, nothing reseeded
    b = _sample(tiny_model, tiny_tokenizer, torch.Generator().manual_seed(3))
    c = _sample(tiny_model, tiny_tokenizer, torch.Generator().manual_seed(4))
    assert a.completion_ids == b.completion_ids and a.texts == b.texts
    assert a.completion_ids != c.completion_ids
    gen = torch.Generator().manual_seed(3)
    first, second = _sample(tiny_model, tiny_tokenizer, gen), _sample(tiny_model, tiny_tokenizer, gen)
    assert first.completion_ids == a.completion_ids and second.completion_ids != first.completion_ids


def test_without_a_generator_the_global_rng_samples(tiny_model, tiny_tokenizer):
    torch.manual_seed(11)
    a = _sample(tiny_model, tiny_tokenizer)
    torch.manual_seed(11)
    b = _sample(tiny_model, tiny_tokenizer)
    assert a.completion_ids == b.completion_ids


def test_greedy_ignores_the_generator(tiny_model, tiny_tokenizer):
    gen = torch.Generator().manual_seed(0)
    state = gen.get_state()
    a = generation.generate(tiny_model, tiny_tokenizer, _prompts(tiny_tokenizer), max_new_tokens=5, greedy=True,
                            generator=gen)
    b = generation.generate(tiny_model, tiny_tokenizer, _prompts(tiny_tokenizer), max_new_tokens=5, greedy=True,
                            batch_size=1)
    assert torch.equal(gen.get_state(), state) and a.completion_ids == b.completion_ids


class _ScriptedLM:
    """Stands in for a model: appends a fixed continuation per row to whatever it is given."""

    def __init__(self, continuations, eos_id):
        self.continuations = continuations
        self.generation_config = type("G", (), {"eos_token_id": eos_id})()
        self.training = True
        self.seen = []

    def eval(self):
        self.training = False

    def train(self, mode=True):
        self.training = mode

    def generate(self, input_ids, attention_mask, **kw):
        self.seen.append((input_ids.clone(), attention_mask.clone()))
        rows = self.continuations[: input_ids.shape[0]]
        self.continuations = self.continuations[input_ids.shape[0]:]
        return torch.cat([input_ids, torch.tensor(rows)], dim=1)


class _Tok:
    pad_token_id, eos_token_id = 0, 9

    def batch_decode(self, seqs, skip_special_tokens=True):
        return [" ".join(str(t) for t in s if not (skip_special_tokens and t in (0, 9))) for s in seqs]


def test_left_padding_and_cut_at_the_first_eos():
    lm = _ScriptedLM([[5, 9, 0, 0], [6, 7, 8, 4]], eos_id=9)
    ro = generation.generate(lm, _Tok(), [[1, 2, 3], [4]], max_new_tokens=4)
    ids, mask = lm.seen[0]
    assert ids.tolist() == [[1, 2, 3], [0, 0, 4]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    assert ro.completion_ids == [[5, 9], [6, 7, 8, 4]] and ro.finished == [True, False]
    assert ro.texts == ["5", "6 7 8 4"] and ro.prompt_ids == [[1, 2, 3], [4]]
    assert lm.training  # the training flag is given back


def test_no_eos_is_a_model_error():
    tok = _Tok()
    tok.eos_token_id = None
    lm = _ScriptedLM([], eos_id=None)
    with pytest.raises(ModelError, match="no EOS"):
        generation.generate(lm, tok, [[1]], max_new_tokens=2)


# ---------------------------------------------------------------- prompts shared by their repeats

def _groups(tok, G=4):
    """Three prompts of different lengths (so left padding differs), each repeated G times, as a GRPO batch."""
    texts = ["What is 2+2?", "How many apples does Tom have after he buys three more?", "Name a colour."]
    return [tok(t)["input_ids"] for t in texts for _ in range(G)]


@pytest.mark.parametrize("kind", ["llama", "qwen2", "gemma2", "gpt2", "gpt_neox"])
@pytest.mark.parametrize("greedy", [False, True])
def test_sharing_a_repeated_prompt_changes_no_completion(kind, greedy, tiny_tokenizer):
    from helpers import make_model

    model = make_model(kind)
    prompts = _groups(tiny_tokenizer)
    ids, mask = generation.left_pad(prompts[:7], 0)
    assert generation.shared_prompt_cache(model, prompts[:7], ids, mask)  # this family takes the shared path
    out = {}
    for share in (False, True):
        out[share] = generation.generate(model, tiny_tokenizer, prompts, max_new_tokens=8, greedy=greedy,
                                         temperature=1.0, batch_size=7, generator=torch.Generator().manual_seed(5),
                                         share_prompts=share)
    assert out[True].completion_ids == out[False].completion_ids
    assert len({tuple(c) for c in out[True].completion_ids}) > (1 if greedy else 3)  # not a degenerate model


def test_each_distinct_prompt_is_read_once(tiny_tokenizer):
    """The prompt tokens that reach the model: every distinct prompt of a batch once (all but its last token),
    plus one token per sequence, instead of every sequence's whole prompt."""
    from helpers import make_model

    model = make_model("llama")
    prompts = _groups(tiny_tokenizer, G=4)
    seen = []
    handle = model.get_input_embeddings().register_forward_hook(lambda m, args, out: seen.append(args[0].shape))
    try:
        generation.generate(model, tiny_tokenizer, prompts, max_new_tokens=1, greedy=True, batch_size=12)
    finally:
        handle.remove()
    P = max(map(len, prompts))
    assert seen == [torch.Size([3, P - 1]), torch.Size([12, 1])]


def test_distinct_prompts_take_the_plain_path(tiny_model, tiny_tokenizer):
    ids, mask = generation.left_pad(_prompts(tiny_tokenizer)[:2], 0)
    assert generation.shared_prompt_cache(tiny_model, _prompts(tiny_tokenizer)[:2], ids, mask) == {}
