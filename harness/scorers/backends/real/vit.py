"""DINO ViT-B/16, OpenAI CLIP image towers and the LAION aesthetic head, in their upstream layouts.

The modules are written to the upstream parameter names (facebookresearch/dino
``vision_transformer.py``; openai/CLIP ``model.py``), so the published files load with
``strict=True`` and no renaming: ``dino_vitbase16_pretrain.pth`` as it is, the
``visual.*`` tensors of CLIP's TorchScript archives (the text tower is not needed for
image features and is not loaded), and the 768 -> 1 linear head of LAION's
``sa_0_4_vit_l_14_linear.pth``.

Preprocessing follows VBench, with torchvision's semantics reproduced in torch and PIL
(checked against torchvision 0.28 by tests/test_golden_upstream.py). Frames enter as
upstream's ``load_video`` returns them, float32 tensors of uint8 values, so the resize is
not rounded back to uint8 (torchvision rounds only integer tensors): resize with antialias
as the transform names it (VBench's ``dino_transform`` / ``clip_transform`` pass
``antialias=False``; VBench-I2V's ``dino_transform_internet`` and ``dreamsim_transform`` leave
torchvision's default, on since torchvision 0.17), centre crop, /255, normalise. The
conditioning image goes through PIL as upstream's ``*_Image`` transforms read it
(``Transform.image``: PIL's resize, which always antialiases, then ``ToTensor``). ``embed``
batches frames of any number of videos (grouped by their preprocessed size) and returns
L2-normalised float64 features.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections import OrderedDict
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from harness.scorers.backends.real.common import load_strict, read_state_dict, save_random
from harness.weights import ResolvedWeight, random_initialiser, resolve

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


# -- preprocessing (torchvision semantics) -----------------------------------------------------------
def resized_size(h: int, w: int, size: int) -> tuple[int, int]:
    """torchvision ``Resize(size)``: shorter side to ``size``, longer side truncated."""
    short, long = (h, w) if h <= w else (w, h)
    new_long = int(size * long / short)
    return (size, new_long) if h <= w else (new_long, size)


def resize_short(x: torch.Tensor, size: int, mode: str, antialias: bool = False) -> torch.Tensor:
    """torchvision ``Resize(size)`` on float (N, 3, H, W) tensors: no rounding, no clamping."""
    return resize_exact(x, resized_size(*x.shape[-2:], size), mode, antialias)


def resize_exact(x: torch.Tensor, hw: tuple[int, int], mode: str, antialias: bool = False) -> torch.Tensor:
    if tuple(x.shape[-2:]) == tuple(hw):
        return x
    return F.interpolate(x, size=hw, mode=mode, align_corners=False, antialias=antialias)


def center_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    h, w = x.shape[-2:]
    top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
    return x[..., top:top + size, left:left + size]


_PIL_FILTERS = {"bilinear": "BILINEAR", "bicubic": "BICUBIC"}


@dataclass(frozen=True)
class Transform:
    """resize (short side or exact square) -> optional centre crop -> /255 -> normalise."""

    resize: int
    mode: str  # bilinear | bicubic
    crop: int | None
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    square: bool = False  # resize to (resize, resize) instead of the shorter side
    antialias: bool = False  # torchvision's antialias for the frames (the image path always antialiases: PIL)

    def _out_size(self, h: int, w: int) -> tuple[int, int]:
        return (self.resize, self.resize) if self.square else resized_size(h, w, self.resize)

    def _finish(self, x: torch.Tensor, device: str) -> torch.Tensor:
        if self.crop:
            x = center_crop(x, self.crop)
        mean = torch.tensor(self.mean, device=device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=device).view(1, 3, 1, 1)
        return (x / 255.0 - mean) / std

    def __call__(self, frames: np.ndarray, device: str) -> torch.Tensor:
        x = torch.from_numpy(np.ascontiguousarray(frames)).to(device).permute(0, 3, 1, 2).float()
        return self._finish(resize_exact(x, self._out_size(*x.shape[-2:]), self.mode, self.antialias), device)

    def image(self, image: np.ndarray, device: str) -> torch.Tensor:
        """(1, 3, h, w) from one (H, W, 3) uint8 image, as upstream's ``*_Image`` transforms read the
        conditioning image: PIL resize (``Image.resize`` with the same filter), centre crop, ``ToTensor``."""
        from PIL import Image

        h, w = image.shape[:2]
        out_h, out_w = self._out_size(h, w)
        pil = Image.fromarray(np.ascontiguousarray(image))
        if (out_h, out_w) != (h, w):
            pil = pil.resize((out_w, out_h), getattr(Image.Resampling, _PIL_FILTERS[self.mode]))
        x = torch.from_numpy(np.asarray(pil, dtype=np.uint8).copy()).to(device).permute(2, 0, 1)[None].float()
        return self._finish(x, device)

    @property
    def identity(self) -> str:
        size = f"{self.resize}sq" if self.square else f"short{self.resize}"
        return f"{size}-{self.mode}" + ("-aa" if self.antialias else "") + (f"-crop{self.crop}" if self.crop else "")


# -- DINO ViT (facebookresearch/dino layout) ----------------------------------------------------
class _DinoAttention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        return self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, c))


class _DinoMlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class _DinoBlock(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim, eps=1e-6), nn.LayerNorm(dim, eps=1e-6)
        self.attn, self.mlp = _DinoAttention(dim, heads), _DinoMlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class _PatchEmbed(nn.Module):
    def __init__(self, patch: int, dim: int):
        super().__init__()
        self.proj = nn.Conv2d(3, dim, patch, patch)


class DinoViT(nn.Module):
    """DINO's VisionTransformer (no head): returns the normed CLS token."""

    def __init__(self, patch: int = 16, dim: int = 768, depth: int = 12, heads: int = 12, mlp_ratio: float = 4.0,
                 img_size: int = 224):
        super().__init__()
        self.patch = patch
        self.patch_embed = _PatchEmbed(patch, dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, (img_size // patch) ** 2 + 1, dim))
        self.blocks = nn.ModuleList(_DinoBlock(dim, heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)

    def pos_encoding(self, h: int, w: int) -> torch.Tensor:
        """DINO's bicubic interpolation of the patch grid, with its +0.1 against rounding."""
        n = self.pos_embed.shape[1] - 1
        h0, w0 = h // self.patch, w // self.patch
        if h0 * w0 == n and h == w:
            return self.pos_embed
        side, dim = int(math.sqrt(n)), self.pos_embed.shape[-1]
        grid = self.pos_embed[:, 1:].reshape(1, side, side, dim).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, scale_factor=((h0 + 0.1) / side, (w0 + 0.1) / side), mode="bicubic")
        grid = grid.permute(0, 2, 3, 1).reshape(1, -1, dim)
        return torch.cat((self.pos_embed[:, :1], grid), dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        t = self.patch_embed.proj(x).flatten(2).transpose(1, 2)
        t = torch.cat((self.cls_token.expand(t.shape[0], -1, -1), t), dim=1) + self.pos_encoding(h, w)
        for block in self.blocks:
            t = block(t)
        return self.norm(t)[:, 0]


# -- CLIP image tower (openai/CLIP layout, under ``visual.``) ------------------------------------
class _Fp32LayerNorm(nn.LayerNorm):
    """CLIP computes LayerNorm in float32 even when the weights are half precision."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.float()).to(x.dtype) if x.dtype != self.weight.dtype else super().forward(x)


class _QuickGELU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class _ClipBlock(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.attn = nn.MultiheadAttention(width, heads)
        self.ln_1, self.ln_2 = _Fp32LayerNorm(width), _Fp32LayerNorm(width)
        self.mlp = nn.Sequential(OrderedDict([("c_fc", nn.Linear(width, width * 4)), ("gelu", _QuickGELU()),
                                              ("c_proj", nn.Linear(width * 4, width))]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (L, N, D), as upstream
        y = self.ln_1(x)
        x = x + self.attn(y, y, y, need_weights=False)[0]
        return x + self.mlp(self.ln_2(x))


class _ClipTransformer(nn.Module):
    def __init__(self, width: int, layers: int, heads: int):
        super().__init__()
        self.resblocks = nn.Sequential(*[_ClipBlock(width, heads) for _ in range(layers)])


class ClipVisual(nn.Module):
    """``model.visual`` of OpenAI CLIP (ViT): returns the projected image embedding."""

    def __init__(self, patch: int, width: int, layers: int, heads: int, output_dim: int, resolution: int = 224):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, patch, patch, bias=False)
        self.class_embedding = nn.Parameter(torch.zeros(width))
        self.positional_embedding = nn.Parameter(torch.zeros((resolution // patch) ** 2 + 1, width))
        self.ln_pre = _Fp32LayerNorm(width)
        self.transformer = _ClipTransformer(width, layers, heads)
        self.ln_post = _Fp32LayerNorm(width)
        self.proj = nn.Parameter(torch.zeros(width, output_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.conv1(x.to(self.conv1.weight.dtype)).flatten(2).transpose(1, 2)
        cls = self.class_embedding.to(t.dtype).expand(t.shape[0], 1, -1)
        t = self.ln_pre(torch.cat((cls, t), dim=1) + self.positional_embedding.to(t.dtype))
        t = self.transformer.resblocks(t.transpose(0, 1)).transpose(0, 1)
        return self.ln_post(t[:, 0]) @ self.proj


CLIP_CONFIGS = {  # OpenAI CLIP image towers used by VBench
    "clip_vit_b32": dict(patch=32, width=768, layers=12, heads=12, output_dim=512),
    "clip_vit_l14": dict(patch=14, width=1024, layers=24, heads=16, output_dim=768),
}


def _randomise(module: nn.Module, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for k, v in module.state_dict().items():
        if k.endswith(("norm1.weight", "norm2.weight", "norm.weight", "ln_1.weight", "ln_2.weight", "ln_pre.weight",
                       "ln_post.weight")):
            sd[k] = torch.ones_like(v)
        else:
            sd[k] = torch.randn(v.shape, generator=g) * (0.02 if v.ndim > 0 else 1.0)
    return sd


@random_initialiser("dino_vitb16")
def _random_dino(path) -> None:
    save_random(_randomise(DinoViT(), 0), path)


def _random_clip(name: str, seed: int):
    def write(path) -> None:
        sd = {f"visual.{k}": v for k, v in _randomise(ClipVisual(**CLIP_CONFIGS[name]), seed).items()}
        save_random(sd, path)
    return write


random_initialiser("clip_vit_b32")(_random_clip("clip_vit_b32", 1))
random_initialiser("clip_vit_l14")(_random_clip("clip_vit_l14", 2))


@random_initialiser("laion_aesthetic_l14")
def _random_aesthetic(path) -> None:
    g = torch.Generator().manual_seed(3)
    save_random({"weight": torch.randn(1, 768, generator=g) * 0.05, "bias": torch.tensor([5.0])}, path)


# Loaded models are cached by the resolved file (path and sha256), not by name: a cache root that
# changes (tests, a real file replacing a random one) never serves a stale model.
def _load_dino(weight: str, device: str) -> tuple[nn.Module, bool]:
    return _dino_from(resolve(weight), device)


def _load_clip(weight: str, device: str, half: bool) -> tuple[nn.Module, bool]:
    return _clip_from(resolve(weight), device, half)


def _load_aesthetic(weight: str, device: str) -> tuple[nn.Module, bool]:
    return _aesthetic_from(resolve(weight), device)


@lru_cache(maxsize=4)
def _dino_from(resolved: ResolvedWeight, device: str) -> tuple[nn.Module, bool]:
    model = DinoViT()
    sd = read_state_dict(resolved)
    sd.pop("head.weight", None), sd.pop("head.bias", None)  # only in fine-tuned variants; DINO's is Identity
    load_strict(model, sd, f"{resolved.name} (DINO ViT-B/16)")
    return model.eval().to(device), resolved.is_random


@lru_cache(maxsize=4)
def _clip_from(resolved: ResolvedWeight, device: str, half: bool) -> tuple[nn.Module, bool]:
    model = ClipVisual(**CLIP_CONFIGS[resolved.name])
    sd = {k[len("visual."):]: v for k, v in read_state_dict(resolved).items() if k.startswith("visual.")}
    load_strict(model, sd, f"{resolved.name} (CLIP image tower, visual.*)")
    model = model.eval().to(device)
    # clip.load keeps the fp16 weights on GPU (LayerNorms compute in fp32) and casts to fp32 on CPU.
    return (model.half() if half else model.float()), resolved.is_random


@lru_cache(maxsize=2)
def _aesthetic_from(resolved: ResolvedWeight, device: str) -> tuple[nn.Module, bool]:
    head = nn.Linear(768, 1)
    load_strict(head, read_state_dict(resolved), f"{resolved.name} (LAION aesthetic linear head)")
    return head.eval().to(device), resolved.is_random


# -- frame embedders -------------------------------------------------------------------------------
class FrameEmbedder(ABC):
    """Frames of any number of videos -> L2-normalised features, batched across videos."""

    name: str
    transform: Transform

    def __init__(self, device: str | None = None, batch: int = 32):
        self.device, self.batch = device or default_device(), batch
        self.model, self.random = self._load()

    @abstractmethod
    def _load(self) -> tuple[nn.Module, bool]:
        """(model in eval mode on ``self.device``, whether its weights are random-init)."""

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    @property
    def identity(self) -> str:
        return self.name + ("+random-weights" if self.random else "")

    @torch.no_grad()
    def embed_many(self, videos: list[np.ndarray]) -> list[np.ndarray]:
        """One (T_i, D) float64 array per (T_i, H_i, W_i, 3) uint8 video; frames of equal
        size share batches whichever video they come from."""
        by_size: dict[tuple[int, int], list[tuple[int, int]]] = {}
        for v, frames in enumerate(videos):
            for t in range(len(frames)):
                by_size.setdefault(frames.shape[1:3], []).append((v, t))
        out = [np.empty((len(f), 0)) for f in videos]
        feats: dict[tuple[int, int], np.ndarray] = {}
        for items in by_size.values():
            for lo in range(0, len(items), self.batch):
                chunk = items[lo:lo + self.batch]
                x = self.transform(np.stack([videos[v][t] for v, t in chunk]), self.device)
                f = F.normalize(self._forward(x).float(), dim=-1).double().cpu().numpy()
                feats.update(zip(chunk, f, strict=True))
        for v, frames in enumerate(videos):
            out[v] = np.stack([feats[(v, t)] for t in range(len(frames))])
        return out

    def embed(self, frames: np.ndarray) -> np.ndarray:
        return self.embed_many([frames])[0]

    @torch.no_grad()
    def embed_image(self, image: np.ndarray) -> np.ndarray:
        """(D,) L2-normalised float64 features of one (H, W, 3) uint8 conditioning image, through the
        image path of the transform (PIL), as VBench-I2V reads the input image."""
        x = self.transform.image(image, self.device)
        return F.normalize(self._forward(x).float(), dim=-1).double().cpu().numpy()[0]


class DinoEmbedder(FrameEmbedder):
    """VBench subject_consistency: shorter side 224 (bilinear, antialias off), no crop, ImageNet normalisation."""

    name = "dino-vitb16"
    transform = Transform(224, "bilinear", None, IMAGENET_MEAN, IMAGENET_STD)

    def _load(self):
        return _load_dino("dino_vitb16", self.device)


class DinoI2VEmbedder(DinoEmbedder):
    """VBench-I2V i2v_subject: shorter side 256 (bicubic, torchvision's default antialias: on), centre crop
    224; the conditioning image through PIL."""

    name = "dino-vitb16-i2v"
    transform = Transform(256, "bicubic", 224, IMAGENET_MEAN, IMAGENET_STD, antialias=True)


class ClipEmbedder(FrameEmbedder):
    """VBench background_consistency: CLIP ViT-B/32, 224 bicubic + centre crop, CLIP normalisation;
    fp16 on GPU as ``clip.load`` gives it (``precision='fp32'`` to override)."""

    name = "clip-vitb32"
    weight = "clip_vit_b32"
    transform = Transform(224, "bicubic", 224, CLIP_MEAN, CLIP_STD)

    def __init__(self, device: str | None = None, batch: int = 32, precision: str = "upstream"):
        if precision not in ("upstream", "fp32"):
            raise ValueError(f"{self.name}: precision must be 'upstream' or 'fp32', got {precision!r}")
        self.precision = precision
        super().__init__(device, batch)

    def _load(self):
        half = self.precision == "upstream" and self.device.startswith("cuda")
        return _load_clip(self.weight, self.device, half)

    @property
    def identity(self) -> str:
        return super().identity + ("" if self.precision == "upstream" else f"+{self.precision}")


class ClipL14Embedder(ClipEmbedder):
    name = "clip-vitl14"
    weight = "clip_vit_l14"


def laion_aesthetic(device: str | None = None) -> tuple[nn.Module, bool]:
    return _load_aesthetic("laion_aesthetic_l14", device or default_device())


EMBEDDERS: dict[str, type[FrameEmbedder]] = {
    cls.name: cls for cls in (DinoEmbedder, DinoI2VEmbedder, ClipEmbedder, ClipL14Embedder)}
