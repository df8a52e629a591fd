"""LoRA through peft: adapters on the policy, the base model as the KL reference.

peft injects its LoRA layers into the model's own modules, so the loop keeps
using the plain ``...ForCausalLM`` (``PeftModel.get_base_model()``): rollouts,
the angle hooks on the decoder layers and the in-process re-scoring all see the
adapted model, and nothing else in the trainer needs to know. The ``PeftModel``
wrapper is kept for three things: saving the adapter (``adapter_model.safetensors``
+ ``adapter_config.json``, what ``PeftModel.from_pretrained`` loads), switching
the adapter off for the reference log-probabilities (the KL term then needs no
second copy of the model), and merging it into full weights
(:func:`export_merged`).
"""

from __future__ import annotations

from pathlib import Path

from anglerank.errors import MissingExtra

__all__ = ["attach", "is_adapter_checkpoint", "export_merged", "DEFAULT_TARGETS"]

# peft's shorthand for every linear layer but the output head: the attention and MLP projections
DEFAULT_TARGETS = "all-linear"


def _peft():
    try:
        import peft
    except ImportError:
        raise MissingExtra("LoRA (--lora-r) needs peft: pip install peft (or pip install 'anglerank[lora]')") from None
    return peft


def attach(model, cfg, checkpoint: Path | None = None):
    """Wrap ``model`` with a trainable LoRA adapter: a new one from ``cfg``, or the one saved in ``checkpoint``."""
    peft = _peft()
    if checkpoint is not None:
        return peft.PeftModel.from_pretrained(model, str(checkpoint), is_trainable=True)
    targets = cfg.lora_target_modules or DEFAULT_TARGETS
    config = peft.LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                             target_modules=targets, task_type="CAUSAL_LM")
    return peft.get_peft_model(model, config)


def is_adapter_checkpoint(path: Path) -> bool:
    return (Path(path) / "adapter_config.json").exists()


def export_merged(checkpoint: Path, output: Path, base_model: str | None) -> Path:
    """Full weights loadable with ``from_pretrained``: the adapter merged into its base (or the checkpoint's
    weights as they are, for a full fine-tune), with the tokenizer."""
    from anglerank import models

    if is_adapter_checkpoint(checkpoint):
        loaded = models.load(base_model, "cpu", "float32")
        merged = _peft().PeftModel.from_pretrained(loaded.model, str(checkpoint)).merge_and_unload()
    else:
        loaded = models.load(str(checkpoint), "cpu", "float32")
        merged = loaded.model
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    with models.quiet_hf_loading():
        merged.save_pretrained(output, safe_serialization=True)
        models.load_tokenizer(checkpoint).save_pretrained(output)
    return output
