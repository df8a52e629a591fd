"""Helpers shared by the test files (fixtures live in conftest.py).

- tiny in-process models: chat templates, ``make_tokenizer``, ``make_model`` and ``HASH_REWARD``;
- real processes, one-line errors, a full disk, the package at a reference commit;
- score directories and data files written by hand (``make_data``, ``make_scores``, ``random_terms``);
- the GAIN-RL set-up the verl tests share.

The full disk is a private tmpfs mounted inside an unprivileged user and mount
namespace (``unshare -Urm``): nothing on the host is touched, and the namespace
(and the tmpfs with it) ends with the command. What a test wants to inspect
afterwards is copied out of the tmpfs by the same shell script.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]  # the repository


# ---------------------------------------------------------------- tiny in-process models

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
    import torch
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


# A deterministic reward (file contents for --reward FILE.py:r) that varies between completions, so groups
# have non-zero advantages; shared by the train, LoRA and tracking tests.
HASH_REWARD = "def r(prompts, completions, **k):\n    return [(sum(map(ord, c)) % 5) / 5 for c in completions]\n"


# ---------------------------------------------------------------- processes, error lines, a full disk

def env() -> dict:
    e = dict(os.environ)
    e["PYTHONPATH"] = str(ROOT) + os.pathsep + e.get("PYTHONPATH", "")
    e["OMP_NUM_THREADS"] = "1"
    return e


def cli_argv(*args) -> list[str]:
    """The ``anglerank`` command as a fresh process."""
    return [sys.executable, "-m", "anglerank.cli", *map(str, args)]


def run_cli(*args, timeout: float = 300, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cli_argv(*args), env=env(), capture_output=True, text=True, timeout=timeout, **kw)


def one_error_line(res, *fragments) -> str:
    """Exit 2 and exactly one ``error:`` line holding every fragment (a CliRunner result or a CompletedProcess)."""
    code = getattr(res, "exit_code", getattr(res, "returncode", None))
    lines = [x for x in res.stderr.splitlines() if x.strip() and not x.startswith("warning:")]
    assert code == 2, (code, res.stderr)
    assert len(lines) == 1 and lines[0].startswith("error:"), res.stderr
    assert "internal error" not in lines[0], lines[0]
    for f in fragments:
        assert f in lines[0], (f, lines[0])
    return lines[0]


def can_make_small_disk() -> bool:
    if shutil.which("unshare") is None:
        return False
    p = subprocess.run(["unshare", "-Urm", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt || exit 3"],
                       capture_output=True)
    return p.returncode == 0


def on_small_disk(mount: Path, size_kb: int, script: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run the bash ``script`` with a ``size_kb`` tmpfs mounted at ``mount`` (created if missing).

    ``$DISK`` in the script is the mount point; ``$PY`` the test interpreter; ``$ANGLERANK`` the command.
    Whatever the script copies out of ``$DISK`` to a real directory survives it.
    """
    mount.mkdir(parents=True, exist_ok=True)
    prelude = (f"set -u; DISK={shlex.quote(str(mount))}; PY={shlex.quote(sys.executable)}; "
               f"ANGLERANK=\"$PY -m anglerank.cli\"; "
               f"mount -t tmpfs -o size={int(size_kb)}k tmpfs \"$DISK\" || exit 97\n")
    return subprocess.run(["unshare", "-Urm", "bash", "-c", prelude + script], env=env(), capture_output=True,
                          text=True, timeout=timeout)


def package_at(commit: str, dest: Path) -> Path:
    """The ``anglerank`` package as it was at ``commit``, unpacked under ``dest`` (put ``dest`` on PYTHONPATH
    to run it); skips the test where the commit is not in this checkout's history."""
    import io
    import tarfile

    import pytest

    tar = shutil.which("git") and subprocess.run(
        ["git", "-C", str(ROOT), "archive", "--format=tar", commit, "anglerank"], capture_output=True)
    if not tar or tar.returncode != 0:
        pytest.skip(f"reference commit {commit[:8]} is not in this checkout")
    with tarfile.open(fileobj=io.BytesIO(tar.stdout)) as tf:
        tf.extractall(dest, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
    return dest


# ---------------------------------------------------------------- data files and score directories written by hand

HF_META = {"info": {"features": {"data_source": {"dtype": "string", "_type": "Value"}}}}


def make_data(path, n, start=0, row_group_size=7, exotic=True):
    """A verl-layout file with extra awkward types: nested lists, map, dictionary, tz timestamp,
    a non-nullable field and Hugging Face schema metadata (``exotic=False``: verl columns only)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    idx = list(range(start, start + n))
    schema = pa.schema([
        pa.field("data_source", pa.string()),
        pa.field("prompt", pa.list_(pa.struct([("content", pa.string()), ("role", pa.string())]))),
        pa.field("ability", pa.string()),
        pa.field("reward_model", pa.struct([("ground_truth", pa.string()), ("style", pa.string())])),
        pa.field("extra_info", pa.struct([("index", pa.int64()), ("split", pa.string()),
                                          ("tags", pa.list_(pa.string()))])),
        pa.field("level", pa.int32(), nullable=False),
        pa.field("attrs", pa.map_(pa.string(), pa.int32())),
        pa.field("kind", pa.dictionary(pa.int32(), pa.string())),
        pa.field("created", pa.timestamp("us", tz="UTC")),
    ], metadata={"huggingface": json.dumps(HF_META)})
    table = pa.table({
        "data_source": ["demo"] * n,
        "prompt": [[{"content": "You are terse.", "role": "system"},
                    {"content": f"Question {i}: what is {i} + {i}?", "role": "user"}] for i in idx],
        "ability": ["math"] * n,
        "reward_model": [{"ground_truth": str(2 * i), "style": "rule"} for i in idx],
        "extra_info": [{"index": i, "split": "test", "tags": ["a"] * (i % 3)} for i in idx],
        "level": pa.array([i % 5 for i in idx], pa.int32()),
        "attrs": pa.array([[("k", i)] if i % 4 else None for i in idx], pa.map_(pa.string(), pa.int32())),
        "kind": pa.array(["x" if i % 2 else "y" for i in idx]).dictionary_encode(),
        "created": pa.array([datetime.datetime(2024, 1, 1 + i % 28, tzinfo=datetime.timezone.utc) for i in idx],
                            pa.timestamp("us", tz="UTC")),
    }, schema=schema)
    if not exotic:
        table = table.select(["data_source", "prompt", "ability", "reward_model", "extra_info"])
    pq.write_table(table, path, row_group_size=row_group_size)
    return path


def make_scores(out, files, scores, *, layers=None, complete=True, estimator="paper", parts=2,
                rows_expected=None, nq=None):
    """Write a score directory by hand. ``scores[layer]`` is a list of (intra, inter) per row
    (None for a null term); score = intra + inter."""
    import pyarrow as pa
    import pyarrow.ipc as ipc
    import pyarrow.parquet as pq

    from anglerank.data.reader import file_fingerprint
    from anglerank.data.writer import score_schema, write_json_atomic

    out.mkdir(parents=True, exist_ok=True)
    layers = layers or sorted(scores)
    rows = []
    n = len(next(iter(scores.values())))
    for r in range(n):
        for lay in layers:
            intra, inter = scores[lay][r]
            score = None if intra is None or inter is None else intra + inter
            rows.append({"row": r, "id": 1000 + r, "layer": lay, "n_tokens": 40 + r, "n_prefix": 10,
                         "n_question": (nq[r] if nq is not None else 20 + (r * 7) % 13), "intra": intra,
                         "inter": inter, "score": score, "truncated": r == 1,
                         "note": None if score is not None else "too short"})
    schema = score_schema(pa.int64(), with_layer=True)
    table = pa.Table.from_pylist(rows, schema=schema)
    names = []
    bounds = np.linspace(0, table.num_rows, parts + 1).astype(int)
    for p in range(parts):
        name = f"scores-{p:05d}.arrow"
        with ipc.new_file(out / name, schema) as w:
            w.write_table(table.slice(bounds[p], bounds[p + 1] - bounds[p]))
        names.append({"file": name, "rows": int(bounds[p + 1] - bounds[p])})
    inputs = [{"path": str(f), "size": f.stat().st_size, "rows": pq.ParquetFile(f).metadata.num_rows,
               "fingerprint": file_fingerprint(f)} for f in files]
    write_json_atomic(out / "manifest.json", {
        "model": "hand", "estimator": estimator, "site": "mlp-input", "layers": layers, "inputs": inputs,
        "inputs_fingerprint": "x", "rows_expected": rows_expected if rows_expected is not None else n,
        "limit": None, "parts": names, "complete": complete, "prompt_column": "prompt",
    })
    return out


def random_terms(n, seed=0, nulls=(3, 17)):
    rng = np.random.default_rng(seed)
    terms = [(float(a), float(b)) for a, b in zip(rng.normal(0.3, 0.1, n), rng.normal(0.2, 0.05, n))]
    for r in nulls:
        terms[r] = (None, terms[r][1])
    return terms


# ---------------------------------------------------------------- the verl sampler's set-up

N_ROWS = 30
BATCH = 4  # data.train_batch_size (prompts per step)
N_RESP = 3  # actor_rollout_ref.rollout.n
SEED = 5
GAIN = dict(subset_size=10, mu0=0, sigma=4, step=6, alpha=2.0, beta_acc=0.5, adj_min=-12, adj_max=12)
K_EFF = 8  # subset_size rounded down to whole batches of 4


def write_ranked_parquet(folder) -> str:
    """A ranked Parquet in verl's layout (N_ROWS questions with angle_rank / angle_score); its path."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    ranks, scores = ranks_and_scores()
    path = folder / "ranked.parquet"
    pq.write_table(pa.table({
        "data_source": ["demo"] * N_ROWS,
        "prompt": [[{"role": "user", "content": f"What is {i} + 1?"}] for i in range(N_ROWS)],
        "ability": ["math"] * N_ROWS,
        "reward_model": [{"ground_truth": str(i + 1), "style": "rule"} for i in range(N_ROWS)],
        "extra_info": [{"index": i, "split": "train"} for i in range(N_ROWS)],
        "angle_rank": pa.array(ranks, pa.int64()),
        "angle_score": pa.array(scores),
    }), path)
    return str(path)


def ranks_and_scores(n: int = N_ROWS, seed: int = 0):
    ranks = np.random.default_rng(seed).permutation(n).astype(np.int64)
    return ranks, 0.8 - ranks / n


def correct(row: int, resp: int, ranks) -> bool:
    """Deterministic 'verifier': low-rank prompts mostly right, the rest mostly wrong."""
    return (ranks[row] < 8) != (resp == 0)


def expected_delta(acc: float, ang: float, g: dict = GAIN) -> float:
    raw = g["step"] * math.tanh(g["alpha"] * (acc - g["beta_acc"])) + g["step"] * math.tanh(g["alpha"] * ang)
    return min(max(raw, g["adj_min"]), g["adj_max"])
