"""VideoMAE-v2 ViT-g/14 features: the content-debiased FVD extractor (Ge et al. 2024).

The network is ``transformers.VideoMAEModel`` plus the fine-tuned model's ``fc_norm`` and
``head``; the upstream checkpoint (OpenGVLab/VideoMAEv2 ``models/modeling_finetune.py``,
``vit_giant_patch14_224``) is converted key by key. Upstream facts the conversion relies on:

- one ``attn.qkv`` Linear without bias, rows ordered [q; k; v], plus ``attn.q_bias`` and
  ``attn.v_bias``; the k bias is a constant zero (transformers: ``key`` has no bias);
- fixed sinusoidal position embeddings (the same table as transformers'), a plain tensor,
  so not in the checkpoint; no cls token; ``norm`` is Identity with mean pooling;
- LayerNorm eps 1e-6 everywhere (transformers' own ``fc_norm`` uses 1e-5, hence ours);
- features = ``fc_norm(tokens.mean(1))`` (upstream ``forward_features``), 1408-d.

The head is converted too and kept as the optional ``logits`` output, so every upstream
tensor is used exactly once.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from pathlib import Path

import torch
from torch import nn

from harness.scorers.backends.real.common import load_strict, read_state_dict, save_random
from harness.weights import ResolvedWeight, WeightsError, random_initialiser, resolve

VIT_G = dict(image_size=224, patch_size=14, num_channels=3, num_frames=16, tubelet_size=2, hidden_size=1408,
             num_hidden_layers=40, num_attention_heads=16, intermediate_size=6144,  # int(1408 * 48 / 11)
             hidden_act="gelu", layer_norm_eps=1e-6, qv_bias=True, use_mean_pooling=True,
             hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
NUM_CLASSES = {"videomae_v2_g_k710": 710, "videomae_v2_g_ssv2": 174}
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
# upstream block sub-module -> transformers layer sub-module (weight and bias each)
_BLOCK_RENAMES = {"norm1": "layernorm_before", "attn.proj": "attention.output.dense", "norm2": "layernorm_after",
                  "mlp.fc1": "intermediate.dense", "mlp.fc2": "output.dense"}


def videomae_v2_config(overrides: dict | None = None):
    from transformers import VideoMAEConfig

    return VideoMAEConfig(**{**VIT_G, **(overrides or {})})


class VideoMAEv2(nn.Module):
    """transformers' encoder + upstream's fc_norm and classification head."""

    def __init__(self, config, num_classes: int):
        from transformers import VideoMAEModel

        super().__init__()
        self.config = config
        self.videomae = VideoMAEModel(config)
        self.fc_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.head = nn.Linear(config.hidden_size, num_classes)

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T, C, H, W) -> (fc_norm features, head logits)."""
        tokens = self.videomae(pixel_values).last_hidden_state
        features = self.fc_norm(tokens.mean(1))
        return features, self.head(features)


def build_videomae_v2(config_overrides: dict | None = None, num_classes: int = 710) -> VideoMAEv2:
    """The ViT-g/14 architecture, or a smaller one with ``config_overrides`` (tests); random weights."""
    return VideoMAEv2(videomae_v2_config(config_overrides), num_classes)


def upstream_layout(config, num_classes: int) -> dict[str, tuple[int, ...]]:
    """Key -> shape of an upstream fine-tuned checkpoint for this config (no pos_embed, no layer-scale gamma)."""
    d, f, c, t = config.hidden_size, config.intermediate_size, config.num_channels, config.tubelet_size
    p = config.patch_size
    out: dict[str, tuple[int, ...]] = {"patch_embed.proj.weight": (d, c, t, p, p), "patch_embed.proj.bias": (d,)}
    for i in range(config.num_hidden_layers):
        b = f"blocks.{i}."
        out |= {b + "norm1.weight": (d,), b + "norm1.bias": (d,), b + "attn.qkv.weight": (3 * d, d),
                b + "attn.q_bias": (d,), b + "attn.v_bias": (d,), b + "attn.proj.weight": (d, d),
                b + "attn.proj.bias": (d,), b + "norm2.weight": (d,), b + "norm2.bias": (d,),
                b + "mlp.fc1.weight": (f, d), b + "mlp.fc1.bias": (f,), b + "mlp.fc2.weight": (d, f),
                b + "mlp.fc2.bias": (d,)}
    return out | {"fc_norm.weight": (d,), "fc_norm.bias": (d,), "head.weight": (num_classes, d),
                  "head.bias": (num_classes,)}


def convert_videomae_v2(upstream: Mapping[str, torch.Tensor], num_layers: int) -> dict[str, torch.Tensor]:
    """Upstream keys -> ``VideoMAEv2`` keys; each upstream tensor is used exactly once, leftovers are an error."""
    src = dict(upstream)

    def take(key: str) -> torch.Tensor:
        if key not in src:
            raise WeightsError(f"VideoMAE-v2 checkpoint: missing upstream tensor {key!r}; is it the right file?")
        return src.pop(key)

    out = {f"videomae.embeddings.patch_embeddings.projection.{w}": take(f"patch_embed.proj.{w}")
           for w in ("weight", "bias")}
    for i in range(num_layers):
        u, h = f"blocks.{i}.", f"videomae.encoder.layer.{i}."
        for old, new in _BLOCK_RENAMES.items():
            for w in ("weight", "bias"):
                out[f"{h}{new}.{w}"] = take(f"{u}{old}.{w}")
        q, k, v = take(u + "attn.qkv.weight").chunk(3, dim=0)  # rows [q; k; v], heads contiguous in each
        a = h + "attention.attention."
        out |= {a + "query.weight": q, a + "key.weight": k, a + "value.weight": v,
                a + "query.bias": take(u + "attn.q_bias"), a + "value.bias": take(u + "attn.v_bias")}
    for w in ("weight", "bias"):
        out[f"fc_norm.{w}"] = take(f"fc_norm.{w}")
        out[f"head.{w}"] = take(f"head.{w}")
    if src:  # e.g. layer-scale gamma_1/2, a learnable pos_embed, extra blocks: another variant
        raise WeightsError(f"VideoMAE-v2 checkpoint: {len(src)} upstream tensors have no place in the "
                           f"architecture: {sorted(src)[:6]}; is it the right file?")
    return out


def _read_upstream(weight: ResolvedWeight) -> dict[str, torch.Tensor]:
    sd = read_state_dict(weight)
    if not sd:  # {"module": state_dict, "epoch": ...}: a wrapper read_state_dict does not unwrap
        raw = torch.load(weight.path, map_location="cpu", weights_only=True)
        sd = {k.removeprefix("module."): v for k, v in (raw.get("module") or raw.get("model") or {}).items()}
    return sd


def write_random_videomae(path: Path, config_overrides: dict | None = None, num_classes: int = 710,
                          dtype: torch.dtype = torch.float16) -> None:
    """Random-init upstream-layout file. fp16 because the released ViT-g files are ~2 GB for ~1B parameters."""
    g = torch.Generator().manual_seed(0)
    sd = {}
    for key, shape in upstream_layout(videomae_v2_config(config_overrides), num_classes).items():
        t = 0.02 * torch.randn(shape, generator=g)
        sd[key] = (t + 1 if key.endswith(("norm1.weight", "norm2.weight", "fc_norm.weight")) else t).to(dtype)
    save_random(sd, path)


for _name, _classes in NUM_CLASSES.items():  # real size: ~2 GB written, only when asked for
    random_initialiser(_name)(partial(write_random_videomae, num_classes=_classes))


class VideoMAEv2Extractor:
    """Features of clips (B, 16, 3, 224, 224) in [0, 1]; no resizing or cropping here.

    ``normalise``: "none" feeds [0, 1] as upstream's own feature extraction (extract_tad_feature.py)
    and the content-debiased FVD package do; "imagenet" applies the mean/std of upstream's
    fine-tuning and evaluation pipeline.
    """

    name = "videomae_v2"

    def __init__(self, weight: str = "videomae_v2_g_k710", output: str = "fc_norm", device="cpu",
                 dtype: torch.dtype = torch.float32, normalise: str = "none", config_overrides: dict | None = None,
                 num_classes: int | None = None):
        if output not in ("fc_norm", "logits"):
            raise ValueError(f"VideoMAE-v2 output must be 'fc_norm' or 'logits', not {output!r}")
        if normalise not in ("none", "imagenet"):
            raise ValueError(f"normalise must be 'none' or 'imagenet', not {normalise!r}")
        resolved = resolve(weight)
        num_classes = num_classes or NUM_CLASSES.get(weight)
        if num_classes is None:
            raise ValueError(f"{weight}: unknown head size; pass num_classes")
        from transformers.initialization import no_init_weights

        with no_init_weights():  # every parameter is overwritten below (load_strict checks), skip ~1B random draws
            model = build_videomae_v2(config_overrides, num_classes)
        sd = convert_videomae_v2(_read_upstream(resolved), model.config.num_hidden_layers)
        load_strict(model, sd, f"VideoMAE-v2 ({weight}, {resolved.path})")
        self.model = model.to(device, dtype).eval()
        self.device, self.dtype, self.output, self.normalise = torch.device(device), dtype, output, normalise
        cfg = model.config
        self.clip_shape = (cfg.num_frames, cfg.num_channels, cfg.image_size, cfg.image_size)
        self.dim = cfg.hidden_size if output == "fc_norm" else num_classes
        self.weights = resolved
        self.identity = (f"videomae-v2({weight})/{output}/norm={normalise}"
                         + ("/custom-config" if config_overrides else "")
                         + ("/random-weights" if resolved.is_random else ""))

    @torch.no_grad()
    def __call__(self, clips: torch.Tensor) -> torch.Tensor:
        if clips.ndim != 5 or tuple(clips.shape[1:]) != self.clip_shape:
            raise ValueError(f"VideoMAE-v2 expects clips (B, {', '.join(map(str, self.clip_shape))}) in [0, 1], "
                             f"got {tuple(clips.shape)}")
        x = clips.to(self.device, torch.float32)
        if self.normalise == "imagenet":
            mean = torch.tensor(IMAGENET_MEAN, device=self.device).view(1, 1, 3, 1, 1)
            std = torch.tensor(IMAGENET_STD, device=self.device).view(1, 1, 3, 1, 1)
            x = (x - mean) / std
        features, logits = self.model(x.to(self.dtype))
        return (features if self.output == "fc_norm" else logits).float()
