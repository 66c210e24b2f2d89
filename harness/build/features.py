"""Fits the tiny world's feature extractors (`harness build features`): the frame encoder and
the clip classifier of harness/scorers/tiny_features.py, supervised by the world's ground truth
(sprites, background, motion, camera pan), with a JSON training record."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from torch.nn import functional as F
from tqdm.auto import tqdm

from harness.data.world import (
    SHAPES,
    SIZES,
    Clip,
    WorldConfig,
    make_clip,
    pan_velocity,
    render_background,
)
from harness.scorers.tiny_features import (
    COLOUR_NAMES,
    MOTION_CLASSES,
    PAN_CLASSES,
    ClipClassifier,
    FrameEncoder,
)


def frame_targets(clip: Clip, t: int, cfg: WorldConfig) -> dict[str, np.ndarray]:
    n = len(COLOUR_NAMES)
    present, shape, size = np.zeros(n), np.full(n, -1), np.full(n, -1)
    pos = np.zeros((n, 2))
    for k, s in enumerate(clip.spec.sprites):
        c = COLOUR_NAMES.index(s.colour)
        if clip.visible[t, k].sum() > 0.5:
            present[c], shape[c], size[c] = 1, SHAPES.index(s.shape), list(SIZES).index(s.size)
            pos[c] = clip.positions[t, k] / cfg.resolution * 2 - 1
    offset = pan_velocity(clip.spec.pan, cfg.pan_speed * cfg.scale) * t
    bg = render_background(clip.spec, cfg.resolution, offset)
    bg4 = bg.reshape(4, cfg.resolution // 4, 4, cfg.resolution // 4, 3).mean(axis=(1, 3)) / 127.5 - 1
    return {"present": present, "shape": shape, "size": size, "pos": pos, "background": bg4.ravel()}


def clip_targets(clip: Clip) -> dict[str, np.ndarray]:
    n = len(COLOUR_NAMES)
    present, motion = np.zeros(n), np.full(n, -1)
    for s in clip.spec.sprites:
        c = COLOUR_NAMES.index(s.colour)
        present[c] = 1
        motion[c] = 0 if s.speed == "still" else MOTION_CLASSES.index(f"{s.direction}-{s.speed}")
    return {"present": present, "motion": motion, "pan": np.array(PAN_CLASSES.index(clip.spec.pan or "none"))}


def _masked_ce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    keep = target >= 0
    return F.cross_entropy(logits[keep], target[keep]) if keep.any() else logits.sum() * 0


def frame_loss(model: FrameEncoder, x: torch.Tensor, tg: dict[str, torch.Tensor]) -> torch.Tensor:
    subj, bg = model(x)
    n = len(COLOUR_NAMES)
    out = model.head_subject(subj).view(-1, n, 1 + len(SHAPES) + len(SIZES) + 2)
    pres, shape, size, pos = out.split([1, len(SHAPES), len(SIZES), 2], dim=-1)
    mask = tg["present"].bool()
    loss = F.binary_cross_entropy_with_logits(pres.squeeze(-1), tg["present"])
    loss = loss + _masked_ce(shape.reshape(-1, len(SHAPES)), tg["shape"].reshape(-1))
    loss = loss + _masked_ce(size.reshape(-1, len(SIZES)), tg["size"].reshape(-1))
    if mask.any():
        loss = loss + F.mse_loss(pos[mask], tg["pos"][mask])
    return loss + F.mse_loss(model.head_background(bg), tg["background"])


def clip_loss(model: ClipClassifier, x: torch.Tensor, tg: dict[str, torch.Tensor]) -> torch.Tensor:
    n, m = len(COLOUR_NAMES), len(MOTION_CLASSES)
    out = model.head(model(x))
    pres = out[:, :n]
    motion = out[:, n : n + n * m].reshape(-1, n, m)
    pan = out[:, n + n * m :]
    loss = F.binary_cross_entropy_with_logits(pres, tg["present"])
    loss = loss + _masked_ce(motion.reshape(-1, m), tg["motion"].reshape(-1))
    return loss + F.cross_entropy(pan, tg["pan"])


# -- training and loading --------------------------------------------------------------------------

def _stack(rows: list[dict[str, np.ndarray]]) -> dict[str, torch.Tensor]:
    out = {}
    for k in rows[0]:
        a = np.stack([r[k] for r in rows])
        out[k] = torch.from_numpy(a).long() if a.dtype.kind == "i" else torch.from_numpy(a).float()
    return out


def train_features(cfg: WorldConfig, out: Path, steps: int = 1500, batch_size: int = 32,
                   num_clips: int = 4096, seed: int = 0, show_progress: bool = True) -> dict:
    """Train both extractors on real clips (half pretrain, half finetune split)."""
    from harness.data.video_io import frames_to_tensor
    from harness.provenance import provenance

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    clips = [make_clip(cfg, "pretrain" if i % 2 == 0 else "finetune", i // 2) for i in range(num_clips)]
    videos = torch.stack([frames_to_tensor(c.frames) for c in clips])
    ftargets = [[frame_targets(c, t, cfg) for t in range(cfg.num_frames)] for c in clips]
    ctargets = [clip_targets(c) for c in clips]
    models = {"frame_encoder": FrameEncoder(), "clip_classifier": ClipClassifier()}
    record: dict = {"what": "tiny world feature extractors (frame encoder, clip classifier)",
                    "reproduce": "harness build features --preset tiny --out <dir> --force",
                    "world": cfg.model_dump(mode="json"), "steps": steps, "batch_size": batch_size,
                    "num_clips": num_clips, "seed": seed, "curves": {}, **provenance()}
    start = time.time()
    for name, model in models.items():
        opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps)
        curve = []
        for step in tqdm(range(steps), desc=f"train {name}", disable=not show_progress):
            idx = rng.integers(0, num_clips, batch_size)
            if name == "frame_encoder":
                ts = rng.integers(0, cfg.num_frames, batch_size)
                x = videos[idx, :, ts]
                loss = frame_loss(model, x, _stack([ftargets[i][t] for i, t in zip(idx, ts, strict=True)]))
            else:
                loss = clip_loss(model, videos[idx], _stack([ctargets[i] for i in idx]))
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            if (step + 1) % 50 == 0:
                curve.append({"step": step + 1, "loss": round(loss.item(), 5)})
        record["curves"][name] = curve
    record["train_seconds"] = round(time.time() - start, 1)
    record["held_out"] = evaluate_features(models["frame_encoder"], models["clip_classifier"], cfg)
    out.mkdir(parents=True, exist_ok=True)
    for name, model in models.items():
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, out / f"{name}.safetensors")
    (out / "training_record.json").write_text(json.dumps(record, indent=2))
    return record


@torch.no_grad()
def evaluate_features(frame_enc: FrameEncoder, clip_cls: ClipClassifier, cfg: WorldConfig, n: int = 256) -> dict:
    """Held-out accuracy of the training heads on eval-split clips (shows the features read the world)."""
    from harness.data.video_io import frames_to_tensor

    frame_enc.eval()
    clip_cls.eval()
    clips = [make_clip(cfg, "eval", 10_000 + i) for i in range(n)]
    videos = torch.stack([frames_to_tensor(c.frames) for c in clips])
    nc = len(COLOUR_NAMES)
    subj, _ = frame_enc(videos[:, :, 0])
    out = frame_enc.head_subject(subj).view(n, nc, -1)
    tg = _stack([frame_targets(c, 0, cfg) for c in clips])
    mask = tg["present"].bool()
    shape_acc = (out[..., 1 : 1 + len(SHAPES)].argmax(-1)[mask] == tg["shape"][mask]).float().mean()
    co = clip_cls.head(clip_cls(videos))
    ct = _stack([clip_targets(c) for c in clips])
    motion = co[:, nc : nc + nc * len(MOTION_CLASSES)].reshape(n, nc, -1).argmax(-1)
    cmask = ct["present"].bool()
    return {
        "frame_shape_accuracy": round(float(shape_acc), 4),
        "clip_motion_accuracy": round(float((motion[cmask] == ct["motion"][cmask]).float().mean()), 4),
        "clip_pan_accuracy": round(float((co[:, nc + nc * len(MOTION_CLASSES) :].argmax(-1) == ct["pan"])
                                         .float().mean()), 4),
        "chance_motion_accuracy": round(1 / len(MOTION_CLASSES), 4),
        "n": n,
    }


