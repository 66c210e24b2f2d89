"""The tiny model's cached rotary embedding and its complex-multiplication rotary attention are exact:
forwards and gradients equal diffusers' own modules bitwise (with and without LoRA), in training and under
inference mode, and one cache serves several video shapes."""

from __future__ import annotations

import copy

import pytest
import torch
from diffusers.models.transformers.transformer_wan import WanAttnProcessor, WanRotaryPosEmbed

from harness.models.tiny_wan import CachedWanRope, ComplexRopeWanAttnProcessor, TinyModelConfig, TinyWanAdapter


def _pair(lora: bool = False) -> tuple[TinyWanAdapter, TinyWanAdapter]:
    torch.manual_seed(0)
    cached = TinyWanAdapter(TinyModelConfig(), num_frames=8, resolution=16)
    if lora:  # trained-looking adapters: B is zero at initialisation, which would hide the LoRA path
        cached.add_lora(8, 8)
        with torch.no_grad():
            for name, p in cached.model.named_parameters():
                if "lora_B" in name:
                    p.normal_(0.0, 0.05)
    plain = copy.deepcopy(cached)
    plain.model.rope.__class__ = WanRotaryPosEmbed  # diffusers' own modules, same buffers and weights
    for block in plain.model.blocks:
        block.attn1.set_processor(WanAttnProcessor())
    assert isinstance(cached.model.rope, CachedWanRope) and type(plain.model.rope) is WanRotaryPosEmbed
    assert all(type(b.attn1.processor) is ComplexRopeWanAttnProcessor for b in cached.model.blocks)
    return cached, plain


def _inputs(b: int, t: int, hw: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, list[str], torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, 3, t, hw, hw, generator=g)
    first = torch.rand(b, 3, hw, hw, generator=g) * 2 - 1
    captions = [f"a red square moving left {i}" for i in range(b)]
    return x, torch.rand(b, generator=g), captions, first


@pytest.mark.parametrize("lora", [False, True])
def test_cached_rope_forward_and_backward_are_bitwise_equal(lora: bool) -> None:
    cached, plain = _pair(lora)
    for step, (b, t, hw) in enumerate([(2, 8, 16), (3, 4, 8), (2, 8, 16)]):  # a second shape, then the first again
        x, sigma, captions, first = _inputs(b, t, hw, step)
        outs = []
        for adapter in (cached, plain):
            adapter.model.train()
            adapter.model.zero_grad()
            out = adapter.predict(x, sigma, adapter.encode_condition(first, captions))
            out.square().mean().backward()
            grads = [p.grad.clone() for p in adapter.model.parameters() if p.grad is not None]
            outs.append((out.detach(), grads))
        assert torch.equal(outs[0][0], outs[1][0])
        assert len(outs[0][1]) == len(outs[1][1])
        assert all(torch.equal(a, c) for a, c in zip(outs[0][1], outs[1][1], strict=True))
    assert len(cached.model.rope._rope_cache) == 2


@pytest.mark.parametrize("lora", [False, True])
def test_cached_rope_built_in_inference_mode_serves_training(lora: bool) -> None:
    cached, plain = _pair(lora)
    x, sigma, captions, first = _inputs(2, 8, 16, 7)
    with torch.inference_mode():  # the cache's first entry made while sampling
        a = cached.predict(x, sigma, cached.encode_condition(first, captions))
        b = plain.predict(x, sigma, plain.encode_condition(first, captions))
    assert torch.equal(a, b)
    out = cached.predict(x, sigma, cached.encode_condition(first, captions))
    out.mean().backward()  # inference tensors could not be saved for backward
    assert torch.equal(out.detach(), a)


def test_state_dict_unchanged() -> None:
    cached, plain = _pair()
    assert list(cached.model.state_dict()) == list(plain.model.state_dict())
