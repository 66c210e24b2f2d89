"""The latent reward model: a frozen diffusion backbone as feature extractor + a small head.

As FCRM's reward model (Sec. 5.1), it scores x0 in the generator's own space: the frozen
base transformer runs on x0 at a fixed noise level, the output of one intermediate block
(spatio-temporal tokens) is read by a forward hook (the blocks after it are skipped), and
a query-attention head cross-attends to those tokens together with the caption tokens and
maps the pooled result to a scalar. Only the head is trained, on rater labels of tiny-world
videos (base-model samples at 16 and 4 sampler steps, and real clips; harness/data/raters.py: a
partial, noisy view, not the evaluation oracle), then frozen. It is the training judge of every
preference and reward method on the tiny preset; evaluation keeps the exact oracle.

`harness train-reward` builds it; the shipped weights and their training record (held-out
agreement with the raters and with the oracle) live in harness/assets/tiny/rewards/latent_rm.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from harness.config import PresetConfig, package_path
from harness.data.batches import split_batch
from harness.data.preferences import PairSet, oracle_score
from harness.data.video_io import tensor_to_frames
from harness.models.base import Conditioning, ModelAdapter
from harness.models.tiny_wan import WEIGHTS_NAME, TinyWanAdapter
from harness.sampling import SamplerConfig, sample

DEFAULT_PATH = "assets/tiny/rewards/latent_rm"
HEAD_FILE, RECORD_FILE = "head.safetensors", "record.json"


class _Stop(Exception):
    """Raised by the feature hook: the blocks after the read-out are not needed."""


class RewardHead(nn.Module):
    """Learned queries cross-attend to visual tokens and caption tokens -> scalar."""

    def __init__(self, feature_dim: int, text_dim: int, width: int = 64, queries: int = 4, heads: int = 4):
        super().__init__()
        self.visual = nn.Sequential(nn.LayerNorm(feature_dim), nn.Linear(feature_dim, width))
        self.text = nn.Linear(text_dim, width)
        self.kind = nn.Parameter(torch.zeros(2, width))  # visual / text token type embeddings
        self.queries = nn.Parameter(0.02 * torch.randn(queries, width))
        self.attend = nn.MultiheadAttention(width, heads, batch_first=True)
        self.out = nn.Sequential(nn.LayerNorm(queries * width), nn.Linear(queries * width, width), nn.SiLU(),
                                 nn.Linear(width, 1))

    def forward(self, features: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        pad = text.abs().sum(-1) == 0  # the caption encoder pads with zeros
        tokens = torch.cat([self.visual(features) + self.kind[0], self.text(text) + self.kind[1]], dim=1)
        visible = torch.zeros(pad.shape[0], features.shape[1], dtype=torch.bool, device=pad.device)
        mask = torch.cat([visible, pad], dim=1)
        q = self.queries.expand(features.shape[0], -1, -1)
        pooled, _ = self.attend(q, tokens, tokens, key_padding_mask=mask, need_weights=False)
        return self.out(pooled.flatten(1)).squeeze(-1)


def block_features(backbone: ModelAdapter, x0: torch.Tensor, cond: Conditioning, layer: int,
                   sigma: float) -> torch.Tensor:
    """(B, tokens, width) output of transformer block ``layer`` of ``backbone`` on x0 at noise level
    ``sigma``; the blocks after it are not run."""
    from trainers.rewards import RewardError

    blocks = getattr(backbone.model, "blocks", None)
    if blocks is None:
        raise RewardError(f"latent_rm reads the tokens of a transformer block, and {type(backbone).__name__} has "
                          "no `blocks` (a UNet); use reward aesthetic or luminance for this family")
    if not 0 <= layer < len(blocks):
        raise RewardError(f"latent_rm reads block {layer}, but the model has {len(blocks)} blocks "
                          f"(0..{len(blocks) - 1})")
    captured: list[torch.Tensor] = []

    def hook(module, args, output):
        captured.append(output[0] if isinstance(output, tuple) else output)
        raise _Stop

    handle = blocks[layer].register_forward_hook(hook)
    try:
        with torch.no_grad():
            backbone.predict(x0, torch.full((x0.shape[0],), sigma, device=x0.device), cond)
    except _Stop:
        pass
    finally:
        handle.remove()
    return captured[0].float()


class LatentRewardModel:
    """A frozen head on a frozen backbone's block features. ``shared``: the backbone is the policy
    being trained (a real family, whose weights are too large to hold twice), read with its LoRA
    disabled, i.e. as the base model the head was fitted on, and in eval mode."""

    def __init__(self, backbone: ModelAdapter, head: RewardHead, layer: int, sigma: float, digest: str = "",
                 shared: bool = False):
        self.backbone, self.head, self.layer, self.sigma, self.digest = backbone, head, layer, sigma, digest
        self.shared = shared
        if not shared:
            backbone.model.requires_grad_(False).eval()
        head.requires_grad_(False).eval()

    @contextlib.contextmanager
    def _frozen(self) -> Iterator[None]:
        if not self.shared:
            yield
            return
        model, was_training = self.backbone.model, self.backbone.model.training
        model.eval()
        try:
            with self.backbone.reference() if self.backbone.has_lora else contextlib.nullcontext():
                yield
        finally:
            model.train(was_training)

    def features(self, x0: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        with self._frozen():
            return block_features(self.backbone, x0, cond, self.layer, self.sigma)

    @torch.no_grad()
    def score(self, x0: torch.Tensor, cond: Conditioning, batch_size: int = 64) -> torch.Tensor:
        self.head.to(x0.device)
        out = [self.head(self.features(x0[i:i + batch_size], cond.index(slice(i, i + batch_size))),
                         cond.text[i:i + batch_size].float()) for i in range(0, x0.shape[0], batch_size)]
        return torch.cat(out)


def video_scorer(rm: LatentRewardModel, batch_size: int = 64):
    """The reward model as a batch judge of uint8 videos: (videos (N, T, H, W, 3), first frames (N, H, W, 3),
    captions) -> (N,) scores, read from what a model sees (no condition spec, no oracle)."""
    from harness.data.video_io import frames_to_tensor

    def score(videos: np.ndarray, first_frames: np.ndarray, captions: list[str]) -> np.ndarray:
        out = []
        for lo in range(0, len(videos), batch_size):
            hi = min(len(videos), lo + batch_size)
            x0 = rm.backbone.encode_video(torch.stack([frames_to_tensor(v) for v in videos[lo:hi]]))
            first = torch.stack([frames_to_tensor(f[None])[:, 0] for f in first_frames[lo:hi]])
            cond = rm.backbone.encode_condition(first, list(captions[lo:hi]))
            out.append(rm.score(x0, cond).cpu().numpy())
        return np.concatenate(out).astype(np.float64)

    return score


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def _directory(path: str | Path | None) -> Path:
    # A relative path that exists from here is the user's (runs/...); otherwise a shipped asset.
    return Path(path) if path and Path(path).exists() else package_path(path or DEFAULT_PATH)


def missing_file(path: str | Path | None) -> str | None:
    """The reward model file missing from ``path`` (default: the shipped one) with the command that
    builds it, or None when both are there."""
    directory = _directory(path)
    for needed in (directory / HEAD_FILE, directory / RECORD_FILE):
        if not needed.is_file():
            return (f"latent reward model file missing: {needed}; build it with `harness train-reward --preset tiny "
                    f"--out {directory}` (a real family: `harness train-reward --preset <name> --pairs footage --out "
                    "DIR`)")
    return None


def load_reward_model(path: str | Path | None = None, adapter: ModelAdapter | None = None) -> LatentRewardModel:
    """The head in ``path`` (default: the shipped one) on the backbone its record names; the
    backbone's weights must be the ones it was trained on (checked by digest). A real family's
    head (``harness train-reward --pairs``) reads ``adapter``, the policy, with its LoRA disabled."""
    from trainers.rewards import RewardError

    directory = _directory(path)
    head_file, record_file = directory / HEAD_FILE, directory / RECORD_FILE
    if problem := missing_file(path):
        raise RewardError(problem)
    record = json.loads(record_file.read_text())
    if "family" in record:
        return _load_shared(directory, record, adapter)
    base_dir = package_path(record["backbone"])
    if not (base_dir / WEIGHTS_NAME).is_file():
        raise RewardError(f"the latent reward model's backbone is missing: {base_dir / WEIGHTS_NAME}")
    digest = file_digest(base_dir / WEIGHTS_NAME)
    if record["backbone_digest"] != digest:
        raise RewardError(f"the latent reward model in {directory} was trained on the features of other backbone "
                          f"weights ({record['backbone_digest']}; {base_dir} holds {digest}); rebuild it with "
                          f"`harness train-reward --out {directory} --force`")
    backbone = TinyWanAdapter.load(base_dir)
    head = RewardHead(**record["head"])
    head.load_state_dict(load_file(head_file))
    return LatentRewardModel(backbone, head, record["layer"], record["sigma"], digest=file_digest(head_file))


def _load_shared(directory: Path, record: dict, adapter: ModelAdapter | None) -> LatentRewardModel:
    from trainers.preference import weights_digest
    from trainers.rewards import RewardError

    if adapter is None:
        raise RewardError(f"the latent reward model in {directory} reads the policy's own frozen base model "
                          f"({record['family']}); it needs the trainer's adapter")
    digest = weights_digest(adapter)
    if digest != record["backbone_digest"]:
        raise RewardError(f"the latent reward model in {directory} was fitted on the features of "
                          f"{record['backbone']} ({record['family']}, weights {record['backbone_digest']}), not on "
                          f"this model (weights {digest}); rebuild it with `{record['reproduce']}`")
    head = RewardHead(**record["head"])
    head.load_state_dict(load_file(directory / HEAD_FILE))
    return LatentRewardModel(adapter, head, record["layer"], record["sigma"],
                             digest=file_digest(directory / HEAD_FILE), shared=True)


# -- training -----------------------------------------------------------------------------
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
        "reproduce": f"harness train-reward --preset {preset.name} --target {target} --out <dir> --force",
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
    from trainers.preference import weights_digest
    from trainers.rewards import RewardError

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
        "reproduce": f"harness train-reward --preset {preset.name} --pairs {pairs_spec} --out {out} --force",
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
    from trainers.rewards import RewardError

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
    """`harness train-reward --pairs SPEC`: the preset's base model, its pair set (cached under ``out``)
    and the head fitted to it."""
    from harness.runner import base_adapter
    from trainers.preference import load_pairs

    cfg = parse_pairs_spec(spec, conditions)
    adapter = base_adapter(preset)
    pairs = load_pairs(adapter, preset, cfg, out, show_progress=show_progress)
    return train_pairwise_reward_model(preset, adapter, pairs, out, pairs_spec=spec, steps=steps,
                                       show_progress=show_progress, **kw)
