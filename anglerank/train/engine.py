"""Where the trainer's completions come from: the rollout engine.

The step (sampled rollouts) and the eval (greedy completions) ask a
:class:`RolloutEngine` for completions and tell it when the policy's weights
changed; they never call a generation library themselves. An engine is any
object with the two methods below, so another backend (a vLLM server, a
separate inference process) is one class, handed to the run's
``StepContext``.

:class:`HFRolloutEngine` is the built-in one: Hugging Face ``generate`` on the
policy module itself (:func:`anglerank.model.generation.generate`), in process, so it
always samples from the current weights and ``update_weights`` has nothing to do.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Protocol, runtime_checkable

import torch

from anglerank.model import generation

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from anglerank.model.generation import Rollouts

__all__ = ["RolloutEngine", "HFRolloutEngine"]


@runtime_checkable
class RolloutEngine(Protocol):
    def generate(self, prompt_ids: list[list[int]], *, max_new_tokens: int, greedy: bool = False,
                 temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0, batch_size: int = 64,
                 generator: torch.Generator | None = None, stop_flag: Callable[[], bool] | None = None) -> Rollouts:
        """One completion per entry of ``prompt_ids`` (a prompt repeated G times for a group), in order.

        Sampling draws from ``generator`` (its state is checkpointed with the run, so a resumed run samples
        what an uninterrupted one would); greedy decoding draws nothing. ``batch_size`` is how many sequences
        decode together (an engine that schedules its own batches may ignore it). ``stop_flag()`` turning true
        may end generation early: fewer completions come back, and the step is redone on resume.
        """
        ...

    def update_weights(self, model: torch.nn.Module) -> None:
        """The policy ``model`` was updated: later completions must come from its new weights."""
        ...


class HFRolloutEngine:
    """Hugging Face ``generate`` on the policy module itself (which shares its parameters with training)."""

    def __init__(self, model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, *, device: str = "cpu",
                 autocast_dtype: torch.dtype | None = None):
        self.model, self.tokenizer, self.device, self.autocast_dtype = model, tokenizer, device, autocast_dtype

    def generate(self, prompt_ids: list[list[int]], *, max_new_tokens: int, greedy: bool = False,
                 temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0, batch_size: int = 64,
                 generator: torch.Generator | None = None, stop_flag: Callable[[], bool] | None = None) -> Rollouts:
        return generation.generate(self.model, self.tokenizer, prompt_ids, max_new_tokens=max_new_tokens,
                                   greedy=greedy, temperature=temperature, top_p=top_p, top_k=top_k,
                                   batch_size=batch_size, device=self.device, autocast_dtype=self.autocast_dtype,
                                   stop_flag=stop_flag, generator=generator)

    def update_weights(self, model: torch.nn.Module) -> None:
        """Nothing to do: generation runs on the trained module's own parameters."""
