"""Pre-trains SHIFT's motion discriminators (`harness build motion-rm`): real clips against
base-model samples from their first frames and captions. The architectures and loader are
harness/scorers/motion_rm.py."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from harness.config import PresetConfig
from harness.data.source import clip_batch, clip_length, dataset_for, frame_size
from harness.data.video_io import tensor_to_frames
from harness.models.starting import base_adapter
from harness.sampling import sample
from harness.scorers.errors import RewardError
from harness.scorers.motion_rm import MotionDiscriminator, default_map_size, save_discriminator


def pretraining_videos(preset: PresetConfig, split: str, clips: int, negatives: int, start: int,
                       show_progress: bool = True) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """Real clips ``start ..`` of ``split`` and ``negatives`` base-model samples per clip from its
    first frame and caption: (videos, labels 1/0, owning clip index). The base model is the
    preset's (a real family, or the tiny model); samples are drawn a few clips at a time
    (``eval.batch_size`` videos per call, 64 on the tiny preset)."""
    adapter = base_adapter(preset)
    adapter.model.eval()
    batch = clip_batch(preset, split, range(start, start + clips))
    videos = [tensor_to_frames(v) for v in batch.videos]
    labels, owners = [1] * clips, list(range(clips))
    per_call = max(1, (preset.eval.batch_size or 64) // negatives)  # clips per sampling call
    for lo in tqdm(range(0, clips, per_call), desc="base samples", disable=not show_progress):
        idx = list(range(lo, min(clips, lo + per_call)))
        rows = [i for i in idx for _ in range(negatives)]
        cond = adapter.encode_condition(batch.first_frames[rows], [batch.captions[i] for i in rows])
        seeds = [int(np.random.SeedSequence([91, start + i, k]).generate_state(1)[0] & 0x7FFFFFFF)
                 for i in idx for k in range(negatives)]
        with torch.no_grad():
            videos += [tensor_to_frames(v) for v in sample(adapter, cond, seeds, preset.sampler)]
        labels += [0] * len(rows)
        owners += rows
    return videos, np.array(labels), np.array(owners)


def fit_discriminator(model: MotionDiscriminator, feats: torch.Tensor, labels: torch.Tensor, train: torch.Tensor,
                      steps: int, batch_size: int, lr: float, seed: int, show_progress: bool = True) -> None:
    """BCE (Eq. 7) on class-balanced batches (half real, half generated), cosine lr."""
    pos, neg = train[labels[train] == 1], train[labels[train] == 0]
    opt = torch.optim.AdamW(model.net.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.01)
    g = torch.Generator().manual_seed(seed)
    model.train()
    half = batch_size // 2
    for step in tqdm(range(steps), desc=f"train {model.kind}", disable=not show_progress):
        idx = torch.cat([pos[torch.randint(len(pos), (half,), generator=g)],
                         neg[torch.randint(len(neg), (half,), generator=g)]])
        loss = nn.functional.binary_cross_entropy_with_logits(model(feats[idx]), labels[idx].float())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        for group in opt.param_groups:
            group["lr"] = lr * 0.5 * (1 + np.cos(np.pi * step / steps))
        opt.step()
    model.eval()


def held_out_scores(logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    from scipy import stats

    pos, neg = logits[labels == 1], logits[labels == 0]
    # AUC = P(real logit > generated logit), from the Mann-Whitney U statistic.
    auc = float(stats.mannwhitneyu(pos, neg).statistic / (len(pos) * len(neg)))
    balanced = 0.5 * (float((pos > 0).mean()) + float((neg <= 0).mean()))
    return {"real": len(pos), "generated": len(neg), "auc": auc, "balanced_accuracy": balanced,
            "mean_logit_real": float(pos.mean()), "mean_logit_generated": float(neg.mean())}


def train_motion_rewards(preset: PresetConfig, out: Path, kinds: list[str], *, clips: int = 192, negatives: int = 4,
                         start: int = 200_000, steps: int = 400, batch_size: int = 64, lr: float = 1e-3,
                         held_out: float = 0.2, seed: int = 0, split: str = "prompts",
                         map_size: Sequence[int] | None = None,
                         show_progress: bool = True) -> dict[str, dict]:
    """Pre-train the discriminators (Sec. 5 "Reward model pre-training") for the preset's clip
    shape; whole clips (a real clip with its 4 negatives) are held out to report generalisation.
    On real footage (a finite split) the clips are the split's first ``clips`` (each once), and
    the features work at ``map_size`` (default: ``default_map_size`` of the frames)."""
    num_frames, (height, width) = clip_length(preset), frame_size(preset)
    if preset.data is not None:
        try:
            size = len(dataset_for(preset).split(split))
        except KeyError as exc:
            raise RewardError(f"motion reward pre-training: {exc.args[0]}; choose one with --split") from exc
        start, clips = 0, min(clips, size)
        if clips < 5:
            raise RewardError(f"split {split!r} of {preset.data.root} has {size} clips; the discriminators need at "
                              "least 5 (one held out); choose a larger split with --split")
    map_size = map_size if map_size is not None else default_map_size(height, width)
    t0 = time.time()
    videos, labels_np, owners = pretraining_videos(preset, split, clips, negatives, start, show_progress)
    sampled_s = time.time() - t0
    labels = torch.tensor(labels_np)
    test = torch.tensor(owners >= int(clips * (1 - held_out)))
    train_idx, test_idx = torch.nonzero(~test).squeeze(1), torch.nonzero(test).squeeze(1)
    seeds = [int(np.random.SeedSequence([17, i]).generate_state(1)[0] & 0x7FFFFFFF) for i in range(len(videos))]
    # The tiny world's square clips keep their one-side size in the record (the shipped models' format).
    size: int | list[int] = height if preset.data is None and height == width else [height, width]
    records: dict[str, dict] = {}
    fields = None
    for kind in kinds:
        torch.manual_seed(seed)
        model = MotionDiscriminator(kind, num_frames, size, map_size=map_size)
        if fields is None:  # both kinds share one flow pass per video
            fields = model.fields(videos)
        feats = model.features(videos, seeds, fields)
        fit_discriminator(model, feats, labels, train_idx, steps, batch_size, lr, seed, show_progress)
        with torch.no_grad():
            logits = model(feats[test_idx]).numpy()
        record = {
            "what": f"{'tiny-world' if preset.data is None else preset.name} SHIFT {kind.upper()} discriminator: "
                    f"real {split}-split clips vs base-model samples",
            "reproduce": f"harness build motion-rm --preset {preset.name} --split {split} --kinds {kind} "
                         "--out <dir> --force",
            "base_model": preset.adapter.path if preset.adapter is not None else preset.base_checkpoint,
            "sampler": preset.sampler.model_dump(),
            "data": {"split": split, "clips": [start, start + clips], "negatives_per_clip": negatives,
                     "videos": len(videos), "held_out_clips": int(clips * held_out)},
            "train": {"steps": steps, "batch_size": batch_size, "lr": lr, "seed": seed, "loss": "BCE, balanced",
                      "sampling_seconds": round(sampled_s, 1), "seconds": round(time.time() - t0, 1)},
            "held_out": held_out_scores(logits, labels_np[test_idx.numpy()]),
        }
        save_discriminator(model, out / kind, record)
        records[kind] = record
    return records
