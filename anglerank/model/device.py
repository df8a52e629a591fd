"""The machine: CPU features, and the device and dtype that ``auto`` means on it.

``auto`` picks CUDA when it is available, and on a CPU bfloat16 only where the CPU has
bf16 units (AVX512-BF16 or AMX); the default token budget per forward batch follows
the CPU too. Used by scoring, the trainer, passrate and the benchmarks.
"""

from __future__ import annotations

import functools
import platform

import torch

from anglerank.errors import UserError


def _cpuinfo(field: str) -> str:
    """A field of the first CPU in Linux's /proc/cpuinfo ('' elsewhere)."""
    try:
        with open("/proc/cpuinfo") as fh:
            return next((x.partition(":")[2].strip() for x in fh if x.startswith(field)), "")
    except OSError:
        return ""


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset:
    """The CPU's feature flags (Linux /proc/cpuinfo; empty elsewhere)."""
    return frozenset(_cpuinfo("flags").split())


def cpu_description() -> str:
    """The CPU model and the bf16 units that choose the defaults, e.g. 'AMD EPYC (AVX512-BF16, no AMX)'."""
    flags = cpu_flags()
    isa = "AMX" if "amx_bf16" in flags else "AVX512-BF16, no AMX" if "avx512_bf16" in flags else "no bf16 units"
    return f"{_cpuinfo('model name') or platform.machine()} ({isa})"


def cpu_has_bf16() -> bool:
    return bool({"amx_bf16", "avx512_bf16"} & cpu_flags())


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {device} requested but CUDA is not available")
    if device != "cpu" and not device.startswith("cuda") and device != "mps":
        raise UserError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N")
    return device


def resolve_dtype(dtype: str, device: str) -> str:
    if dtype == "auto":
        if device.startswith("cuda"):
            return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
        return "bfloat16" if device == "cpu" and cpu_has_bf16() else "float32"
    if dtype not in ("bfloat16", "float16", "float32"):
        raise UserError(f"unknown dtype {dtype!r}; use auto, bfloat16, float16 or float32")
    return dtype


def default_batch_tokens(device: str) -> int:
    """The token budget per forward batch when none is given (on CUDA: when the model's shape or the
    free memory is unknown, see :func:`anglerank.scoring.memory.cuda_budget`); recorded in the manifest.

    GPUs want large batches (16384). CPUs want small ones that stay in cache: 1024 was
    measured best on AVX512-BF16 without AMX (bench_score.py); AMX's tile units want
    longer matrices, and 4096 is what issue 12's reporter measured best on a 2-core
    CPU with AMX (3,441 tokens/s against 2,827 at 1024 and 2,072 at 16384).
    """
    if str(device) != "cpu":
        return 16384
    return 4096 if "amx_bf16" in cpu_flags() else 1024
