"""Fits the latent reward model's head (`harness build latent-rm`): on rater labels of tiny-world
videos, or, for a real family, on preference pairs with the Bradley-Terry loss. The architecture
and loader are harness/scorers/latent_rm.py."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from tqdm.auto import tqdm

from harness.config import PresetConfig
from harness.data.batches import split_batch
from harness.data.preferences import PairSet, oracle_score
from harness.data.video_io import tensor_to_frames
from harness.models.base import Conditioning, ModelAdapter, weights_digest
from harness.models.starting import base_adapter
from harness.models.tiny_wan import WEIGHTS_NAME, TinyWanAdapter
from harness.sampling import SamplerConfig, sample
from harness.scorers.errors import RewardError
from harness.scorers.latent_rm import (
    HEAD_FILE,
    RECORD_FILE,
    LatentRewardModel,
    RewardHead,
    block_features,
    file_digest,
)

LABELS = {"rater": "rater label: key-frame integrity and end-point adherence with label noise "
                    "(harness/data/raters.py)",
          "oracle": "oracle score: mean of sprite integrity and motion adherence (the evaluation judge)"}


def _labelled_dataset(preset: PresetConfig, adapter: TinyWanAdapter, conditions: int, start: int,
                      show_progress: bool) -> tuple[torch.Tensor, list[int], np.ndarray, np.ndarray, dict[str, int]]:
    """Videos (N, C, T, H, W) with their condition indices, rater labels and oracle scores: per
    condition, two base-model samples at the preset's sampler, one at 4 Euler steps (blurrier, more
    distorted: coverage of bad videos) and the real clip."""
    from harness.data.raters import rater_score

    batch = split_batch(preset.world, "prompts", range(start, start + conditions))
    oracle = oracle_score(preset.world)
    four = SamplerConfig(**{**preset.sampler.model_dump(), "num_steps": 4})
    videos, owners, kinds = [], [], {"sampled": 0, "sampled_4_steps": 0, "real": 0}
    for lo in tqdm(range(0, conditions, 32), desc="reward-model data", disable=not show_progress):
        idx = list(range(lo, min(conditions, lo + 32)))
        cond = adapter.encode_condition(batch.first_frames[idx], [batch.captions[i] for i in idx])
        for k, cfg in ((0, preset.sampler), (1, preset.sampler), (2, four)):
            seeds = [int(np.random.SeedSequence([77, start + i, k]).generate_state(1)[0] & 0x7FFFFFFF) for i in idx]
            videos.append(sample(adapter, cond, seeds, cfg))
            owners += idx
            kinds["sampled_4_steps" if k == 2 else "sampled"] += len(idx)
        videos.append(batch.videos[idx])
        owners += idx
        kinds["real"] += len(idx)
    x = torch.cat(videos)
    frames = [tensor_to_frames(v) for v in x]
    truth = np.array([oracle(f, batch.specs[i]) for f, i in zip(frames, owners, strict=True)])
    rated = np.array([rater_score(f, batch.specs[i], preset.world) for f, i in zip(frames, owners, strict=True)])
    keep = np.isfinite(truth) & np.isfinite(rated)
    return x[keep], [o for o, k in zip(owners, keep, strict=True) if k], rated[keep], truth[keep], kinds


def _fit_head(head: RewardHead, batch_loss: Callable[[torch.Generator], torch.Tensor], *, steps: int, lr: float,
              seed: int, desc: str, show_progress: bool) -> None:
    """AdamW (weight decay 1e-4) on the head alone with a cosine learning rate; ``batch_loss(g)``
    draws a training batch from ``g`` and returns its loss. The head ends frozen, in eval mode."""
    head.requires_grad_(True).train()
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=1e-4)
    g = torch.Generator().manual_seed(seed)
    for step in tqdm(range(steps), desc=desc, disable=not show_progress):
        loss = batch_loss(g)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        for group in opt.param_groups:
            group["lr"] = lr * 0.5 * (1 + np.cos(np.pi * step / steps))
        opt.step()
    head.requires_grad_(False).eval()


def train_reward_model(preset: PresetConfig, out: Path, *, conditions: int = 384, start: int = 20_000,
                       steps: int = 1500, batch_size: int = 64, lr: float = 1e-3, layer: int = 2,
                       sigma: float = 0.0, held_out: float = 0.15, seed: int = 0, target: str = "rater",
                       show_progress: bool = True) -> dict:
    """Fit the head on rater labels (``target='oracle'``: on the evaluation oracle's scores, which makes
    the judge an evaluation metric's twin); hold out whole conditions to report generalisation, as
    agreement with the labels fitted and with the oracle."""
    from scipy import stats

    t0 = time.time()
    torch.manual_seed(seed)
    base_dir = preset.base_checkpoint_path()
    backbone = TinyWanAdapter.load(base_dir)
    backbone.model.eval()
    if target not in LABELS:
        raise ValueError(f"target {target!r}: choose one of {', '.join(LABELS)}")
    x, owners, rated, oracle, kinds = _labelled_dataset(preset, backbone, conditions, start, show_progress)
    scores = rated if target == "rater" else oracle
    batch = split_batch(preset.world, "prompts", range(start, start + conditions))
    cond = backbone.encode_condition(batch.first_frames[owners], [batch.captions[i] for i in owners])
    head = RewardHead(backbone.model.config.num_attention_heads * backbone.model.config.attention_head_dim,
                      backbone.config.text_dim)
    rm = LatentRewardModel(backbone, head, layer, sigma)
    feats = torch.cat([rm.features(x[i:i + 64], cond.index(slice(i, i + 64))) for i in range(0, len(x), 64)])
    text = cond.text.float()
    y = torch.tensor(scores, dtype=torch.float32)
    test_conditions = set(range(int(conditions * (1 - held_out)), conditions))
    test = torch.tensor([o in test_conditions for o in owners])
    train_idx, test_idx = torch.nonzero(~test).squeeze(1), torch.nonzero(test).squeeze(1)

    def batch_loss(g: torch.Generator) -> torch.Tensor:
        b = train_idx[torch.randint(len(train_idx), (batch_size,), generator=g)]
        return torch.nn.functional.mse_loss(head(feats[b], text[b]), y[b])

    _fit_head(head, batch_loss, steps=steps, lr=lr, seed=seed, desc="train reward head", show_progress=show_progress)
    with torch.no_grad():
        pred = head(feats[test_idx], text[test_idx]).numpy()
    truth, truth_oracle = scores[test_idx.numpy()], oracle[test_idx.numpy()]
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in head.state_dict().items()}, out / HEAD_FILE)
    record = {
        "what": "tiny-world latent reward model: frozen base-transformer features + query-attention head",
        "reproduce": f"harness build latent-rm --preset {preset.name} --target {target} --out <dir> --force",
        "backbone": preset.base_checkpoint, "backbone_digest": file_digest(base_dir / WEIGHTS_NAME),
        "layer": layer, "sigma": sigma,
        "head": {"feature_dim": feats.shape[-1], "text_dim": text.shape[-1]},
        "target": LABELS[target],
        "data": {"split": "prompts", "conditions": [start, start + conditions], "videos": kinds,
                 "kept": len(y), "held_out_conditions": len(test_conditions)},
        "train": {"steps": steps, "batch_size": batch_size, "lr": lr, "seed": seed,
                  "seconds": round(time.time() - t0, 1)},
        "held_out": {"videos": len(truth), "pearson": float(stats.pearsonr(pred, truth)[0]),
                     "spearman": float(stats.spearmanr(pred, truth)[0]),
                     "rmse": float(np.sqrt(np.mean((pred - truth) ** 2))),
                     "rmse_of_mean_predictor": float(np.sqrt(np.mean((truth - y[train_idx].mean().item()) ** 2))),
                     "oracle": {"pearson": float(stats.pearsonr(pred, truth_oracle)[0]),
                                "spearman": float(stats.spearmanr(pred, truth_oracle)[0])},
                     "labels_vs_oracle": {"pearson": float(stats.pearsonr(rated[test_idx.numpy()], truth_oracle)[0]),
                                          "spearman": float(stats.spearmanr(rated[test_idx.numpy()],
                                                                            truth_oracle)[0])}},
    }
    (out / RECORD_FILE).write_text(json.dumps(record, indent=2))
    return record


def train_pairwise_reward_model(preset: PresetConfig, adapter: ModelAdapter, pairs: PairSet, out: Path, *,
                                pairs_spec: str, steps: int = 300, batch_size: int = 8, lr: float = 1e-3,
                                layer: int | None = None, sigma: float = 0.0, held_out: float = 0.15, seed: int = 0,
                                show_progress: bool = True) -> dict:
    """Fit the head to preference pairs with the Bradley-Terry loss -log sigmoid(r(chosen) - r(rejected)),
    on the features of ``adapter`` (the preset's base model, frozen): a real family's latent reward
    model, where no oracle scores exist. The pairs are VAE-encoded once and kept on the CPU (Wan2.1 at
    81x480x832: 8 MB per video); block features are read per batch (a real model's tokens are too many
    to cache). The last ``held_out`` of the pairs are held out and report pairwise accuracy. ``layer``
    defaults to the middle block (an intermediate feature, as the paper's head reads)."""

    if layer is None:
        layer = len(getattr(adapter.model, "blocks", [])) // 2
    n_test = max(1, round(len(pairs) * held_out))
    if len(pairs) - n_test < 1:
        raise RewardError(f"{len(pairs)} preference pairs: too few to train on and hold some out; give more "
                          "(--conditions, or a larger pairs file)")
    t0 = time.time()
    torch.manual_seed(seed)
    adapter.model.requires_grad_(False).eval()
    device = next(adapter.model.parameters()).device

    encoded = [pairs.tensors(adapter, range(lo, min(lo + batch_size, len(pairs))))[:2]
               for lo in range(0, len(pairs), batch_size)]
    chosen, rejected = (torch.cat([part[k].cpu() for part in encoded]) for k in (0, 1))

    def margins_of(idx: list[int], head: RewardHead) -> torch.Tensor:
        cond = pairs.condition(adapter, idx)
        both = Conditioning.cat([cond, cond])
        x = torch.cat([chosen[idx], rejected[idx]]).to(device)
        r = head(block_features(adapter, x, both, layer, sigma), both.text.float())
        return r[:len(idx)] - r[len(idx):]

    cond = pairs.condition(adapter, [0])
    head = RewardHead(block_features(adapter, chosen[:1].to(device), cond, layer, sigma).shape[-1],
                      cond.text.shape[-1]).to(device)
    train_n = len(pairs) - n_test

    def batch_loss(g: torch.Generator) -> torch.Tensor:
        idx = torch.randint(train_n, (min(batch_size, train_n),), generator=g).tolist()
        return -torch.nn.functional.logsigmoid(margins_of(idx, head)).mean()

    _fit_head(head, batch_loss, steps=steps, lr=lr, seed=seed, desc="train reward head (pairs)",
              show_progress=show_progress)
    with torch.no_grad():
        def accuracy(rows: range) -> tuple[float, float]:
            m = torch.cat([margins_of(list(rows[i:i + batch_size]), head) for i in range(0, len(rows), batch_size)])
            return float((m > 0).float().mean()), float(m.mean())

        train_acc, _ = accuracy(range(train_n))
        test_acc, test_margin = accuracy(range(train_n, len(pairs)))
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in head.state_dict().items()}, out / HEAD_FILE)
    record = {
        "what": "latent reward model of a real family: frozen base-transformer block features + query-attention "
                "head, fitted to preference pairs (Bradley-Terry)",
        "reproduce": f"harness build latent-rm --preset {preset.name} --pairs {pairs_spec} --out {out} --force",
        "family": preset.adapter.family if preset.adapter else "tiny",
        "backbone": preset.adapter.path if preset.adapter else preset.base_checkpoint,
        "backbone_digest": weights_digest(adapter),
        "layer": layer, "sigma": sigma,
        "head": {"feature_dim": head.visual[1].in_features, "text_dim": head.text.in_features},
        "target": "Bradley-Terry: P(chosen > rejected) = sigmoid(r(chosen) - r(rejected))",
        "data": {"pairs": pairs_spec, "count": len(pairs), "held_out_pairs": n_test,
                 "source": pairs.provenance.get("source", "file")},
        "train": {"steps": steps, "batch_size": batch_size, "lr": lr, "seed": seed,
                  "seconds": round(time.time() - t0, 1), "accuracy": train_acc},
        "held_out": {"pairs": n_test, "accuracy": test_acc, "mean_margin": test_margin},
    }
    (out / RECORD_FILE).write_text(json.dumps(record, indent=2))
    return record


def parse_pairs_spec(spec: str, conditions: int):
    """``footage[:SPLIT]``, ``rollouts[:SPLIT]`` or ``file:PATH`` as a PairsConfig (``conditions`` pairs)."""
    from trainers.preference import PairsConfig

    kind, _, arg = spec.partition(":")
    if kind == "file" and arg:
        return PairsConfig(source="file", path=arg)
    if kind in ("footage", "rollouts"):
        # rollouts are ranked by the oracle here: this builds a judge, it is not a method training on one
        return PairsConfig(source=kind, split=arg or "prompts", conditions=conditions, per_condition=2,
                           judge="oracle")
    raise RewardError(f"--pairs {spec!r}: give footage[:SPLIT] (a real clip chosen over a base sample), "
                      "rollouts[:SPLIT] (tiny world, judged by its oracle) or file:PATH (a labelled pairs file)")


def train_reward_on_pairs(preset: PresetConfig, spec: str, out: Path, *, conditions: int = 256, steps: int = 300,
                          show_progress: bool = True, **kw) -> dict:
    """`harness build latent-rm --pairs SPEC`: the preset's base model, its pair set (cached under ``out``)
    and the head fitted to it."""
    from trainers.preference import load_pairs

    cfg = parse_pairs_spec(spec, conditions)
    adapter = base_adapter(preset)
    pairs = load_pairs(adapter, preset, cfg, out, show_progress=show_progress)
    return train_pairwise_reward_model(preset, adapter, pairs, out, pairs_spec=spec, steps=steps,
                                       show_progress=show_progress, **kw)
