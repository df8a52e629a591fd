"""docs/method.md, "Why it should matter": ||X^T G||_F^2 = sum_ij (x_i . x_j)(g_i . g_j)."""

from __future__ import annotations

import torch


def _double_sum(x_ND: torch.Tensor, g_NO: torch.Tensor) -> torch.Tensor:
    return ((x_ND @ x_ND.T) * (g_NO @ g_NO.T)).sum()


def _norm_cosine_sum(x_ND: torch.Tensor, g_NO: torch.Tensor) -> torch.Tensor:
    norm_N = torch.linalg.vector_norm(x_ND, dim=1)
    cos_NN = (x_ND @ x_ND.T) / (norm_N[:, None] * norm_N[None, :])
    return (norm_N[:, None] * norm_N[None, :] * cos_NN * (g_NO @ g_NO.T)).sum()


def test_identity_random_float64() -> None:
    gen = torch.Generator().manual_seed(0)
    for n, d, o in [(1, 3, 2), (7, 5, 11), (40, 16, 9)]:
        x_ND = torch.randn(n, d, generator=gen, dtype=torch.float64)
        g_NO = torch.randn(n, o, generator=gen, dtype=torch.float64)
        lhs = (x_ND.T @ g_NO).pow(2).sum()
        torch.testing.assert_close(lhs, _double_sum(x_ND, g_NO), rtol=1e-12, atol=0.0)
        torch.testing.assert_close(lhs, _norm_cosine_sum(x_ND, g_NO), rtol=1e-12, atol=0.0)


def test_identity_on_tiny_llama_up_proj() -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        intermediate_size=64,
        vocab_size=100,
        max_position_embeddings=64,
    )
    config._attn_implementation = "eager"
    model = LlamaForCausalLM(config).double()
    model.train()

    mlp = model.model.layers[-1].mlp
    captured: dict[str, torch.Tensor] = {}

    def pre_hook(_module, args):
        captured["x"] = args[0].detach().clone()

    def up_hook(_module, _inputs, output):
        output.retain_grad()
        captured["up_out"] = output

    handles = [mlp.register_forward_pre_hook(pre_hook), mlp.up_proj.register_forward_hook(up_hook)]
    try:
        input_ids_BT = torch.randint(0, config.vocab_size, (3, 12))
        logits_BTV = model(input_ids=input_ids_BT).logits
        loss = torch.nn.functional.cross_entropy(
            logits_BTV[:, :-1].reshape(-1, config.vocab_size), input_ids_BT[:, 1:].reshape(-1)
        )
        loss.backward()
    finally:
        for h in handles:
            h.remove()

    x_ND = captured["x"].reshape(-1, config.hidden_size)
    g_NO = captured["up_out"].grad.reshape(-1, config.intermediate_size)
    grad_W_OD = mlp.up_proj.weight.grad
    assert grad_W_OD.shape == (config.intermediate_size, config.hidden_size)
    assert x_ND.dtype == torch.float64 and g_NO.dtype == torch.float64
    assert float(g_NO.abs().max()) > 0.0

    # nn.Linear computes x W^T, so dL/dW = G^T X.
    torch.testing.assert_close(grad_W_OD, g_NO.T @ x_ND, rtol=1e-10, atol=1e-14)
    lhs = grad_W_OD.pow(2).sum()
    torch.testing.assert_close(lhs, _double_sum(x_ND, g_NO), rtol=1e-10, atol=0.0)
    torch.testing.assert_close(lhs, _norm_cosine_sum(x_ND, g_NO), rtol=1e-10, atol=0.0)
