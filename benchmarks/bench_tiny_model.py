"""Seconds per training step and per sampled video for the tiny model on this machine.

    python benchmarks/bench_tiny_model.py [--repeats 5] [--out benchmarks/results/tiny_model.json]

Training steps are timed for full fine-tuning (as in `harness build base`) and for
LoRA (as the alignment trainers use it), at the preset's batch size. Sampling is
timed per video for the preset's sampler, with and without CFG. Each figure is
the median over repeats after one warm-up. Results are written with provenance.

``kernels``: the rate (GFLOP/s) of the model's two heaviest operations at a sampling
batch's shapes (its linear layers and its self-attention, which take most of a
run's time), next to this host's rate on one large matrix product: how close the
tiny model's compute already runs to what these cores do at best.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from bench_common import median_seconds, write_record

from harness.config import load_preset
from harness.data.batches import split_batch
from harness.models.tiny_wan import TinyWanAdapter
from harness.sampling import SamplerConfig, sample


def train_step_seconds(adapter: TinyWanAdapter, batch, repeats: int) -> float:
    params = adapter.trainable_parameters()
    opt = torch.optim.AdamW(params, lr=1e-4)
    g = torch.Generator().manual_seed(0)

    def step():
        x0 = batch.videos
        noise = torch.randn(x0.shape, generator=g)
        sigma = torch.rand(x0.shape[0], generator=g)
        cond = adapter.encode_condition(batch.first_frames, batch.captions)
        loss = (adapter.predict(adapter.add_noise(x0, noise, sigma), sigma, cond)
                - adapter.training_target(x0, noise, sigma)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()

    return median_seconds(step, repeats)


def kernel_rates(adapter: TinyWanAdapter, cond, bs: int, repeats: int) -> dict:
    """GFLOP/s of the model's linear layers and self-attention at a sampling batch's shapes, against one
    2048^3 matrix product (the host's best case). Shapes are read from the model (its token count after
    patching) and its config, so the figures follow the preset."""
    import torch.nn.functional as F

    cfg = adapter.model.config
    seen: list[torch.Size] = []
    hook = adapter.model.patch_embedding.register_forward_hook(lambda m, i, o: seen.append(o.shape))
    with torch.no_grad():
        adapter.predict(torch.randn(adapter.latent_shape(bs)), torch.full((bs,), 0.5), cond)
    hook.remove()
    tokens = bs * seen[0][2:].numel()
    heads, head_dim = cfg.num_attention_heads, cfg.attention_head_dim
    dim = heads * head_dim
    x = torch.randn(tokens, dim)
    q = torch.randn(bs, heads, tokens // bs, head_dim)
    w_attn, w_ffn, big = torch.randn(dim, dim), torch.randn(cfg.ffn_dim, dim), torch.randn(2048, 2048)
    cases = {
        f"linear {tokens}x{dim}->{dim}": (lambda: F.linear(x, w_attn), 2 * tokens * dim * dim),
        f"linear {tokens}x{dim}->{cfg.ffn_dim}": (lambda: F.linear(x, w_ffn), 2 * tokens * dim * cfg.ffn_dim),
        f"attention {bs}x{heads}x{tokens // bs}x{head_dim}": (lambda: F.scaled_dot_product_attention(q, q, q),
                                                            4 * bs * heads * (tokens // bs) ** 2 * head_dim),
        "matmul 2048^3 (host's best case)": (lambda: big @ big, 2 * 2048 ** 3),
    }
    return {name: round(flop / median_seconds(fn, repeats) / 1e9, 1) for name, (fn, flop) in cases.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "tiny_model.json")
    args = ap.parse_args()
    preset = load_preset(args.preset)
    if preset.threads:
        torch.set_num_threads(preset.threads)
    bs = preset.pretrain.batch_size
    batch = split_batch(preset.world, "eval", range(bs))
    results: dict = {"batch_size": bs, "repeats": args.repeats}

    adapter = TinyWanAdapter.load(preset.base_checkpoint_path())
    results["parameters"] = sum(p.numel() for p in adapter.model.parameters())
    adapter.model.train()
    results["train_step_full_s"] = train_step_seconds(adapter, batch, args.repeats)
    adapter.add_lora(rank=8, alpha=8)
    results["train_step_lora_r8_s"] = train_step_seconds(adapter, batch, args.repeats)

    adapter = TinyWanAdapter.load(preset.base_checkpoint_path())
    adapter.model.eval()
    cond = adapter.encode_condition(batch.first_frames, batch.captions)
    seeds = list(range(bs))
    for name, sampler in {
        "ode": preset.sampler,
        "ode_cfg": preset.sampler.model_copy(update={"guidance_scale": 3.0}),
        "sde": preset.sampler.model_copy(update={"kind": "sde"}),
        "fewstep_3": SamplerConfig(timesteps=[1000, 757, 522]),
    }.items():
        secs = median_seconds(lambda s=sampler: sample(adapter, cond, seeds, s), args.repeats)
        results[f"sample_{name}"] = {"settings": sampler.model_dump(), "seconds_per_batch": secs,
                                      "seconds_per_video": secs / bs}
    with torch.no_grad():
        x = torch.randn(adapter.latent_shape(bs))
        results["forward_s"] = median_seconds(
            lambda: adapter.predict(x, torch.full((bs,), 0.5), cond), args.repeats)
    results["kernels_gflops"] = kernel_rates(adapter, cond, bs, max(args.repeats, 10))
    write_record(args.out, "tiny model speed", args.preset, results)


if __name__ == "__main__":
    main()
