"""What the benchmark scripts share: the authors' scoring loop, the machine's description, results on disk.

The scripts import it by name (``from common import ...``): a script's own folder is on
``sys.path`` when it runs as ``python benchmarks/X.py``. Only the standard library at the top:
gpu_check's `_cli` stage imports its siblings before it starts the CLI, which must start as a
user's does.
"""

from __future__ import annotations

import json
import os
from pathlib import Path


def authors_reference(model, tok, records, preset: str) -> tuple[list[float], int]:
    """The authors' algorithm: one prompt per forward pass of the full model (LM head included),
    activations kept until the end, then the full L x L cosine matrix per prompt. The matrix is
    reduced over the right segment spans (the paper-intent means, in float64), so with a float32
    model its scores are the ground truth for ours. Returns the scores and the tokens run."""
    import torch

    from anglerank import angles
    from anglerank.model.render import Renderer

    target = model.model.layers[-1].mlp.up_proj
    renderer = Renderer(tok, preset)
    acts, spans, tokens = [], [], 0
    for rec in records:
        r = renderer.render(rec.question, rec.history)  # chat template + generation prompt
        store = {}
        h = target.register_forward_hook(lambda m, a, o: store.__setitem__("x", a[0].detach()))
        with torch.no_grad():
            model(input_ids=torch.tensor([r.ids], device=model.device))
        h.remove()
        acts.append(store["x"])  # kept in memory until the end, as in the released script
        spans.append((r.n_prefix, r.q_end))
        tokens += len(r.ids)
    scores = []
    for x, (p, q) in zip(acts, spans):
        intra, inter = angles.naive_concentration(x.squeeze(0), range(p, q), range(p))  # the full L x L matrix
        scores.append(float(angles.combine(intra, inter)))
    return scores, tokens


def machine(device: str = "cpu") -> str:
    """The card of a CUDA device, else the CPU's model and core count."""
    if device.startswith("cuda"):
        import torch

        return torch.cuda.get_device_name(device)
    from anglerank.model.device import cpu_description

    return f"{cpu_description()}, {os.cpu_count()} cores"


def write_json(path: Path, obj, indent: int = 1, **dumps) -> Path:
    """Write ``obj`` as JSON (a complete file or none: a killed run leaves no half-written results)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=indent, **dumps) + "\n")
    tmp.replace(path)
    return path
