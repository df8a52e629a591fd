"""gpu_check's measurements: the models it builds, their FLOP counts and MFU, and the timed runs
(`anglerank score` as a subprocess, the library in process, the authors' loop).

Only the standard library at the top (gpu_check's `_cli` stage imports this module before it
starts the real CLI); torch, transformers and anglerank are imported where they are used.
"""

from __future__ import annotations

import gc
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GPU_CHECK = Path(__file__).resolve().with_name("gpu_check.py")  # its `_cli` stage runs `anglerank`

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")

# Qwen2.5-0.5B / -1.5B shapes (vocabulary: the bundled tokenizer's); tiny ones for --smoke.
SHAPES = {
    "0.5b": dict(hidden_size=896, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                 intermediate_size=4864),
    "1.5b": dict(hidden_size=1536, num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2,
                 intermediate_size=8960),
    "tiny": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                 intermediate_size=128),
    "tiny2": dict(hidden_size=96, num_hidden_layers=3, num_attention_heads=6, num_key_value_heads=2,
                  intermediate_size=192),
}
QWEN2_COMMON = dict(architectures=["Qwen2ForCausalLM"], hidden_act="silu", rms_norm_eps=1e-6, rope_theta=1e6,
                    max_position_embeddings=32768, tie_word_embeddings=True, use_sliding_window=False,
                    attention_dropout=0.0, initializer_range=0.02)

# Dense (no sparsity) bf16 tensor-core peaks in TFLOPS, by a substring of the CUDA device
# name; the first match wins, so the more specific names come first.
BF16_PEAK_TFLOPS = (
    ("GH200", 989.0), ("H200 NVL", 835.0), ("H100 NVL", 835.0), ("H100 PCIe", 756.0),
    ("H200", 989.0), ("H100", 989.0), ("H800", 989.0), ("B200", 2250.0),
    ("A100", 312.0), ("A800", 312.0), ("L40S", 362.0), ("L40", 181.0), ("L4", 121.0),
)


# --- counting (pure, unit-tested) ------------------------------------------------------------------

def table_peak_tflops(device_name: str) -> float | None:
    """The card's dense bf16 peak from the table; None for unknown cards and MIG slices."""
    if "MIG" in device_name:
        return None  # a slice has a fraction of the card's units
    return next((peak for key, peak in BF16_PEAK_TFLOPS if key in device_name), None)


def qwen2_params(cfg: dict) -> dict:
    """Parameter counts of a Qwen2 config (q/k/v with bias, SwiGLU MLP, RMSNorm), by part."""
    d, layers, inter, vocab = cfg["hidden_size"], cfg["num_hidden_layers"], cfg["intermediate_size"], cfg["vocab_size"]
    heads, kv_heads = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd = cfg.get("head_dim") or d // heads
    attn = (d * heads * hd + heads * hd) + 2 * (d * kv_heads * hd + kv_heads * hd) + heads * hd * d
    mlp = 3 * d * inter
    layer = attn + mlp + 2 * d  # two RMSNorm weights
    non_embedding = layers * layer + d  # + final norm
    return {
        "embedding": vocab * d,
        "lm_head": vocab * d,  # tied or not, the LM head's matmul runs in a full forward
        "non_embedding": non_embedding,
        # the scorer stops at the last layer's MLP input: that MLP and the final norm never run
        "scorer": non_embedding - mlp - d,
        "total": non_embedding + vocab * d * (1 if cfg.get("tie_word_embeddings", True) else 2),
    }


def flops_per_token(params: dict) -> dict:
    """Forward FLOPs per token (2 per multiply-add), attention term left out."""
    return {"scorer": 2 * params["scorer"], "authors": 2 * (params["non_embedding"] + params["lm_head"])}


def executed_tokens(n_tokens: list[int], n_prefix: list[int], prefix_cache: bool = True) -> int:
    """Tokens that run through the model when rows sharing a prompt prefix run it once.

    From the output's `n_tokens`/`n_prefix` columns: each row with its own tokens after a
    prefix runs only those, and each distinct prefix (told apart by length) runs once. An
    approximation (a prefix shared by fewer than two rows of a window runs with its row);
    the in-process runs count exactly, with a hook, and record both.
    """
    total = sum(n_tokens)
    shared = [p for t, p in zip(n_tokens, n_prefix) if 0 < p < t]
    if not prefix_cache or len(shared) < 2:
        return total
    return total - sum(shared) + sum(set(shared))


def rates(prompt_tokens: int, ran_tokens: int, seconds: float, flops_tok: float, peak_flops: float) -> dict:
    """tokens/s (every prompt token) and MFU, counted on the tokens that ran and on all of them."""
    if not seconds or seconds <= 0:
        return {}
    return {
        "seconds": round(seconds, 3),
        "tokens_per_s": round(prompt_tokens / seconds, 1),
        "ran_tokens_per_s": round(ran_tokens / seconds, 1),
        "mfu": round(flops_tok * ran_tokens / seconds / peak_flops, 4),
        "mfu_all_tokens": round(flops_tok * prompt_tokens / seconds / peak_flops, 4),
    }


# --- device memory -------------------------------------------------------------------------------

def free_memory() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def reset_peak(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def peak_mib(device: str) -> float | None:
    import torch

    return round(torch.cuda.max_memory_allocated() / 2**20, 1) if device.startswith("cuda") else None


# --- environment ---------------------------------------------------------------------------------

def measure_matmul_tflops(device: str, n: int, iters: int) -> float:
    """Achieved bf16 matmul TFLOPS on an n x n x n product (the card's practical peak)."""
    import torch

    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    sync()
    t0 = time.perf_counter()
    for _ in range(iters):
        a @ b
    sync()
    return 2 * n**3 * iters / (time.perf_counter() - t0) / 1e12


def environment(device: str, smoke: bool) -> dict:
    import torch
    import transformers

    cuda = device.startswith("cuda")
    if cuda:
        name = torch.cuda.get_device_name(device)
    else:
        from anglerank.model.device import cpu_description

        name = f"CPU {cpu_description()}"
    measured = measure_matmul_tflops(device, 512 if smoke else 8192, 10 if smoke else 30)
    table = table_peak_tflops(name) if cuda else None
    return {
        "device": device, "device_name": name, "python": platform.python_version(),
        "torch": torch.__version__, "transformers": transformers.__version__,
        "cuda": torch.version.cuda, "threads": torch.get_num_threads(),
        "gpu_memory_gib": round(torch.cuda.get_device_properties(device).total_memory / 2**30, 1) if cuda else None,
        "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
        "anglerank": str(Path(sys.modules["anglerank"].__file__).parent),
        "bf16_peak_tflops_table": table, "bf16_matmul_tflops_measured": round(measured, 3),
        "peak_tflops_used": table or round(measured, 3),
        "peak_source": "table (dense bf16)" if table else "measured bf16 matmul",
    }


# --- models --------------------------------------------------------------------------------------

def build_model(shape: str, bundle: Path, work: Path, device: str, seed: int) -> dict:
    """A Qwen2 model of ``shape`` with random bf16 weights, saved with the bundle's tokenizer."""
    import torch
    import transformers

    from anglerank.model.loading import load_tokenizer, quiet_hf_loading

    tok = load_tokenizer(bundle)
    cfg_dict = {**QWEN2_COMMON, **SHAPES[shape], "vocab_size": len(tok), "bos_token_id": tok.bos_token_id,
                "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id}
    torch.manual_seed(seed)
    with torch.device(device):  # initialise where it runs: seconds on a GPU, minutes on a CPU for 1.5B
        model = transformers.AutoModelForCausalLM.from_config(transformers.Qwen2Config(**cfg_dict))
    model.to(torch.bfloat16)
    actual = sum(p.numel() for p in model.parameters())
    folder = work / f"model-{shape}"
    with quiet_hf_loading():  # no progress bars in the log
        model.save_pretrained(folder)
    for name in TOKENIZER_FILES:
        shutil.copy2(bundle / name, folder / name)
    del model
    free_memory()
    params = qwen2_params(cfg_dict)
    return {"path": str(folder), "config": SHAPES[shape] | {"vocab_size": len(tok)}, "params": params,
            "params_in_model": actual, "params_match": actual == params["total"],
            "flops_per_token": flops_per_token(params)}


def load_model(path: str, device: str, dtype: str):
    from anglerank.model import loading

    loaded = loading.load(path, device, dtype)
    got = str(next(loaded.model.parameters()).dtype).replace("torch.", "")
    if got != dtype:  # an older transformers may ignore the dtype argument: say so instead of timing the wrong thing
        raise RuntimeError(f"asked for {dtype} weights, got {got}")
    return loaded


# --- timed runs ----------------------------------------------------------------------------------

def run_cli(model_dir: str, prompts: Path, n: int, out: Path, block_imports: bool, cli_extra: list[str],
            timeout_s: float) -> dict:
    """`anglerank score` with its defaults in a fresh process (gpu_check.py's `_cli` stage): wall
    time (start-up included) and the scoring loop's time from the manifest."""
    from anglerank.data.writer import load_scores, read_manifest

    stats = out.with_suffix(".stats.json")
    cmd = [sys.executable, str(GPU_CHECK), "_cli", "--stats", str(stats)]
    cmd += ["--block-imports"] if block_imports else []
    cmd += ["--", "score", str(prompts), "-o", str(out), "--model", model_dir, "--preset", "gainrl",
            "--limit", str(n), "--overwrite", "--quiet", *cli_extra]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return {"error": "timed out (time budget)", "command": " ".join(cmd[4:])}
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        return {"error": f"exit {proc.returncode}", "stderr_tail": proc.stderr[-3000:], "command": " ".join(cmd[4:])}
    manifest, table = read_manifest(out), load_scores(out)
    result = {"command": "anglerank " + " ".join(cmd[cmd.index("--") + 1:]), "wall_s": round(wall, 3),
              "loop_s": manifest["elapsed_s"], "startup_s": round(wall - manifest["elapsed_s"], 3),
              "rows": table.num_rows, "tokens": manifest["tokens"], "dtype": manifest["dtype"],
              "device": manifest["device"], "batch_tokens": manifest["batch_tokens"],
              "batch_tokens_basis": manifest.get("batch_tokens_basis"),
              "batch_tokens_backoff": manifest.get("batch_tokens_backoff"),
              "prefix_cache": manifest["prefix_cache"], "window_rows": manifest["window_rows"],
              "ran_tokens_estimate": executed_tokens(table.column("n_tokens").to_pylist(),
                                                     table.column("n_prefix").to_pylist(), manifest["prefix_cache"])}
    result.update(json.loads(stats.read_text()) if stats.exists() else {"stats": "missing"})
    result["scores"] = table.column("score").to_pylist()
    return result


def score_inprocess(loaded, prompts: Path, out: Path, n: int, dtype: str, device: str,
                    batch_tokens: int | None = None, prefix_cache: bool = True) -> dict:
    """The scoring loop through the library (model already loaded); a hook counts what runs."""
    import torch

    from anglerank.data.writer import load_scores
    from anglerank.model import hooks
    from anglerank.scoring.engine import ScoreOptions
    from anglerank.scoring.run import run_score

    count = {"forwards": 0, "padded": 0, "real": torch.zeros((), dtype=torch.long, device=device)}

    def on_forward(module, fargs, kwargs):
        ids, mask = kwargs["input_ids"], kwargs["attention_mask"]
        count["forwards"] += 1
        count["padded"] += ids.numel()
        count["real"] += mask[:, -ids.shape[1]:].sum()  # stays on the device: no sync per batch

    handle = hooks.base_model(loaded.model).register_forward_pre_hook(on_forward, with_kwargs=True)
    opt = ScoreOptions(model=str(loaded.path), preset="gainrl", dtype=dtype, device=device,
                       batch_tokens=batch_tokens, prefix_cache=prefix_cache)
    reset_peak(device)
    t0 = time.perf_counter()
    try:
        manifest = run_score([str(prompts)], out, options=opt, loaded=loaded, limit=n, overwrite=True)
    finally:
        handle.remove()
    wall = time.perf_counter() - t0
    table = load_scores(out)
    ran = int(count["real"].item())
    return {"rows": table.num_rows, "tokens": manifest["tokens"], "loop_s": manifest["elapsed_s"],
            "wall_s": round(wall, 3), "dtype": dtype, "batch_tokens": manifest["batch_tokens"],
            "prefix_cache": prefix_cache, "forwards": count["forwards"], "ran_tokens": ran,
            "ran_tokens_estimate": executed_tokens(table.column("n_tokens").to_pylist(),
                                                   table.column("n_prefix").to_pylist(), prefix_cache),
            "padding_fraction": round(1 - ran / count["padded"], 4) if count["padded"] else None,
            "rows_per_forward": round(table.num_rows / count["forwards"], 1) if count["forwards"] else None,
            "peak_gpu_mib": peak_mib(device), "scores": table.column("score").to_pylist()}


def run_authors(loaded, prompts: Path, n: int, cap_s: float, device: str, chunk: int) -> dict:
    """The authors' loop (common.authors_reference) on up to n prompts, in chunks
    until ``cap_s`` seconds are spent; tokens/s makes a partial run comparable."""
    from common import authors_reference

    from anglerank.data.reader import ParquetSource

    records = list(ParquetSource([str(prompts)]).iter_records(stop_row=n))
    authors_reference(loaded.model, loaded.tokenizer, records[:2], "gainrl")  # warm-up: kernels, allocator
    reset_peak(device)
    scores, tokens, seconds = [], 0, 0.0
    for i in range(0, len(records), chunk):
        if seconds >= cap_s:
            break
        t0 = time.perf_counter()
        sc, nt = authors_reference(loaded.model, loaded.tokenizer, records[i:i + chunk], "gainrl")
        seconds += time.perf_counter() - t0  # scores come back as Python floats: synchronised
        scores += sc
        tokens += nt
    return {"rows": len(scores), "tokens": tokens, "seconds": round(seconds, 3),
            "tokens_per_s": round(tokens / seconds, 1), "peak_gpu_mib": peak_mib(device), "scores": scores}
