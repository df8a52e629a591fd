"""The settings of scoring, each declared once (see :mod:`anglerank.settings`).

They come in groups because other commands share some of them: ``validate`` and
``passrate`` load and prompt a model the same way, and ``anglerank train`` holds the
model, prompt and angle settings by inheriting the groups (its command line and TOML
stay flat). :class:`ScoreOptions` is every group plus what only ``score`` has.
A field marked ``result`` changes the scores, so a score manifest records it and
``--resume`` and ``merge`` check it (:mod:`anglerank.data.manifest`).

No torch here: the command line builds its options from these fields.
"""

from __future__ import annotations

from dataclasses import dataclass

from anglerank import settings
from anglerank.model.render import PRESETS
from anglerank.scoring import estimators
from anglerank.settings import setting

__all__ = ["ModelSettings", "InputColumns", "PromptFormat", "AngleSettings", "ScoreOptions", "DTYPES"]

DTYPES = ("auto", "bfloat16", "float16", "float32")
MODEL, DATA, ANGLE = "Model", "Data", "GAIN-RL"  # help panels (of `anglerank train`)


def _sites() -> tuple:
    from anglerank.model.hooks import SITES  # where the sites are implemented (imports torch: only when checked)

    return SITES


def _estimator_help() -> str:
    return "; ".join(f"{n}: {estimators.get(n).help}" for n in estimators.names()) + "."


def _w_inter_help() -> str:
    defaults = [f"{estimators.get(n).default_w_inter:g} ({n})" for n in estimators.names()]
    listed = f"{', '.join(defaults[:-1])} or {defaults[-1]}" if len(defaults) > 1 else defaults[0]
    return f"Weight of C_inter in score. Default {listed}."


@dataclass
class ModelSettings:
    """Which model, on which device, in which precision."""

    model: str | None = setting(None, "Hugging Face id (hub cache, or network when online) or local folder. Default: "
                                "the embedded SmolLM2-135M-Instruct.", flags=("--model", "-m"), panel=MODEL)
    dtype: str = setting("auto", "auto|bfloat16|float16|float32. auto: bf16 on CUDA and on CPUs with AMX/AVX512-BF16, "
                         "else float32. Training keeps weights and optimiser in float32 and runs bf16 under "
                         "autocast.", panel=MODEL, choices=DTYPES, result=True)
    device: str = setting("auto", "auto|cpu|cuda|cuda:N.", panel=MODEL, resume=True)


@dataclass
class InputColumns:
    """Which columns of the input hold the question and the row id."""

    prompt_column: str | None = setting(
        None, "Column with the question: a string or a list of {role, content} messages; dotted paths reach into "
        "structs (extra_info.question). Default: auto-detect prompt, question, problem, text.", panel=DATA)
    id_column: str | None = setting(
        None, "Column copied to the output `id`: integer or string values (another type is refused). Default: the "
        "first of extra_info.index, id or index that holds integers or strings; a candidate of another type (e.g. "
        "double) is skipped with a warning.", panel=DATA)


@dataclass
class PromptFormat:
    """How a row becomes the prompt the model sees."""

    preset: str = setting("none", "none: the row's messages through the chat template; gainrl: the authors' "
                          "four-message prompt around the question.", panel=DATA, choices=PRESETS, result=True)
    system: str | None = setting(None, "Set or replace the system message.", panel=DATA, result=True)
    prefix: str | None = setting(None, "Plain-text mode (no chat template): score PREFIX + question; the prefix is "
                                 "segment P.", panel=DATA, result=True)


@dataclass
class AngleSettings:
    """Where the hidden states are read and how they become a score."""

    site: str = setting("mlp-input", "Hook site: mlp-input (the MLP input of layer k, i.e. post-attention norm "
                        "output; the authors' site) or residual (decoder layer output).", panel=ANGLE, choices=_sites,
                        result=True)
    estimator: str = setting(estimators.DEFAULT, _estimator_help(), panel=ANGLE, choices=estimators.names,
                             result=True)
    w_intra: float = setting(1.0, "Weight of C_intra in score.", panel=ANGLE, valid="any", result=True)
    w_inter: float | None = setting(None, _w_inter_help(), panel=ANGLE, valid="any", result=True)
    code_prefix_tokens: int = setting(110, "gainrl-code: fixed prefix length in tokens (authors: 110).", panel=ANGLE,
                                      valid=">= 0", result=True)
    code_suffix_tokens: int = setting(6, "gainrl-code: fixed suffix length in tokens (authors: 6).", panel=ANGLE,
                                      valid=">= 0", result=True)
    prefix_cache: bool = setting(
        True, "Run a token prefix that rows share (system prompt, few-shot turns, template header) once and reuse "
        "its key/value cache, so only each row's own tokens run: the same scores up to rounding, about 2x faster "
        "with --preset gainrl. Used for Llama, Qwen2/3, Mistral, Gemma2, GPT-2 and GPT-NeoX models.", panel=ANGLE,
        flags=("--prefix-cache",), result=True)


@dataclass
class ScoreOptions(AngleSettings, PromptFormat, ModelSettings):
    """Everything that determines the scores (the ``result`` fields must match on --resume)."""

    # ints, 'all' or 'A:B'; on the command line --layer (repeatable) or --layers
    layers: list = setting(help="Decoder layers to hook.", factory=lambda: [-1], cli=False, result=True)
    max_length: int = setting(4096, "Prompt length limit in tokens: a longer prompt is truncated at the end and "
                              "flagged `truncated` (passrate: not judged, pass_rate null).",
                              valid=">= 1", result=True)
    batch_tokens: int | None = setting(
        None, "Token budget per forward batch, padding included. Default: on CUDA, what the free GPU memory holds for "
        "this model's shape (docs/gpu.md); on CPUs 4096 with AMX, else 1024 (small batches stay in cache); recorded "
        "in the manifest with its reasons, and a --resume keeps it. A batch that runs out of GPU memory is split "
        "and the budget halved (recorded as batch_tokens_backoff). A cached shared prefix counts for every row "
        "(each row attends to its keys/values).", valid=">= 1", result=True)
    device_map: str | dict | None = setting(
        None, "Spread the model's layers over several devices (accelerate): auto (every visible GPU; under torchrun "
        "each rank takes its share), balanced, sequential, or an explicit map of module name -> device as inline "
        "JSON or a JSON file, e.g. '{\"model.embed_tokens\": 0, \"model.layers.0\": 0, \"model.layers.1\": 1}'. "
        "Only the layers up to the deepest hooked one are loaded either way.", cli_type=str)

    def __post_init__(self):
        settings.check(self)
        if self.w_inter is None:  # a given one was checked above; an estimator's default is a finite constant
            self.w_inter = float(estimators.get(self.estimator).default_w_inter)
        if not self.layers:
            self.layers = [-1]
