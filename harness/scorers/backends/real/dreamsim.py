"""DreamSim (Fu et al. 2023) frame embeddings for VBench-I2V's ``i2v_background``, in the upstream layouts.

VBench-I2V (``vbench2_beta_i2v/i2v_background.py``) builds ``dreamsim(pretrained=True)``: the
default ``ensemble`` variant of ssundaram21/dreamsim (``dreamsim/config.py``, release v0.2.x),
three ViT-B/16 branches, each fine-tuned with LoRA on its attention ``qkv`` projections:

=========  ==========================================  ========================  ====
branch     feature (``dreamsim/model.py``)             normalisation             dim
=========  ==========================================  ========================  ====
DINO       CLS token of block 11's output, *before*    ImageNet mean/std         768
           the final LayerNorm (a forward hook)
CLIP       ``ln_post(CLS) @ proj`` (OpenAI CLIP,       OpenAI CLIP mean/std      512
           QuickGELU)
OpenCLIP   ``ln_post(CLS) @ proj`` (GELU)              OpenAI CLIP mean/std      512
=========  ==========================================  ========================  ====

The 1792-d concatenation (the MLP head is the identity for LoRA models) is centred (its mean over
features subtracted) and divided by its norm (``normalize_embeds=True``); VBench L2-normalises it
again. ``FrameEmbedder.embed_many`` does that last step, so the model returns the centred vector.

Weight files, loaded strictly in their upstream layouts:

* ``dino_vitb16``: DINO's ``dino_vitbase16_pretrain.pth``, the backbone that DreamSim's
  ``torch.hub.load('facebookresearch/dino:main', 'dino_vitb16')`` loads (shared with
  subject_consistency). The ``dino_vitb16_pretrain.pth`` in DreamSim's zip is DINO's full training
  checkpoint, read upstream only for the DINO projection head, which the ``cls`` feature never uses.
* ``dreamsim_clip_vitb16`` / ``dreamsim_open_clip_vitb16``: DreamSim's ``*_vitb16_pretrain.pth.tar``,
  the CLIP towers converted to DINO's ViT layout (``load_clip_as_dino.py``,
  ``load_open_clip_as_dino.py``): ``{'state_dict': {DINO ViT keys, 'pos_drop.*' (CLIP's ``ln_pre``,
  which replaces the dropout), 'proj' (768, 512)}}``; every LayerNorm eps 1e-5.
* ``dreamsim_ensemble_lora`` / ``dreamsim_ensemble_lora_config``: the PEFT adapter
  (``ensemble_lora/adapter_model.safetensors`` and ``adapter_config.json``) saved from the
  ``PerceptualModel``: ``base_model.model.extractor_list.{i}.model.blocks.{j}.attn.qkv.lora_{A,B}.weight``.
  The adapters are merged at load: ``W_qkv += (lora_alpha / r) * B @ A`` (``/ sqrt(r)`` with rsLoRA).

Upstream publishes the four ``dreamsim_*`` files only inside ``dreamsim_ensemble_checkpoint.zip``
(release v0.2.0-checkpoints, what ``pip install dreamsim`` (0.2.x) fetches): each manifest entry's
source is that zip with its member after ``#``. dreamsim 0.1.x's checkpoint (v0.1.0, one adapter
folder per branch, wrapped differently) is another layout and is refused by the strict load.
A cache file that is the zip itself (what a plain ``prefetch`` downloads) is read through that
member; a file copied out of the unzipped release (``prefetch NAME --from DIR``) is read as it is.

Preprocessing follows VBench-I2V's ``dreamsim_transform(224)``: frames, float tensors as
``load_video`` returns them, resized to 224x224 (bicubic with torchvision's default antialias, on
since torchvision 0.17; *not* rounded back to uint8: the tensors are float32), then /255; each
branch normalises with its own mean/std. The conditioning image goes through PIL as upstream's
``dreamsim_transform_Image`` (PIL's bicubic resize, then ``ToTensor``): ``embed_image``.
"""

from __future__ import annotations

import json
import math
import tempfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from harness.scorers.backends.real.common import load_strict, read_state_dict
from harness.scorers.backends.real.vit import (
    CLIP_MEAN,
    CLIP_STD,
    EMBEDDERS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    DinoViT,
    FrameEmbedder,
    Transform,
)
from harness.weights import ResolvedWeight, WeightsError, manifest_entry, random_initialiser, resolve_all

DIM, DEPTH, EMBED_DIM = 768, 12, 512
BRANCHES = ("dino_vitb16", "clip_vitb16", "open_clip_vitb16")  # upstream's extractor_list order
TOWER_WEIGHTS = ("dino_vitb16", "dreamsim_clip_vitb16", "dreamsim_open_clip_vitb16")
LORA_WEIGHT, LORA_CONFIG = "dreamsim_ensemble_lora", "dreamsim_ensemble_lora_config"
WEIGHTS = (*TOWER_WEIGHTS, LORA_WEIGHT, LORA_CONFIG)
BRANCH_STATS = ((IMAGENET_MEAN, IMAGENET_STD), (CLIP_MEAN, CLIP_STD), (CLIP_MEAN, CLIP_STD))
LORA_PREFIX = "base_model.model.extractor_list"


# -- branches ---------------------------------------------------------------------------------------
def _tokens(vit: DinoViT, x: torch.Tensor, pre_norm: nn.Module | None = None) -> torch.Tensor:
    """DINO ViT ``prepare_tokens`` (+ ``pos_drop``, a LayerNorm in the CLIP conversions) and the blocks."""
    h, w = x.shape[-2:]
    t = vit.patch_embed.proj(x).flatten(2).transpose(1, 2)
    t = torch.cat((vit.cls_token.expand(t.shape[0], -1, -1), t), dim=1) + vit.pos_encoding(h, w)
    if pre_norm is not None:
        t = pre_norm(t)
    for block in vit.blocks:
        t = block(t)
    return t


class DinoBranch(DinoViT):
    """DINO ViT-B/16 (``dino_vitbase16_pretrain.pth``): DreamSim's ``cls`` feature is the CLS token of the
    last block's output, hooked before the final ``norm`` (which is loaded but unused)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _tokens(self, x)[:, 0]


class _QuickGeluMlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.fc1(x)
        return self.fc2(x * torch.sigmoid(1.702 * x))


class ClipAsDino(DinoViT):
    """A CLIP image tower in DINO's ViT layout (DreamSim's conversion): ``pos_drop`` is CLIP's ``ln_pre``,
    ``norm`` its ``ln_post``, ``proj`` its projection; LayerNorm eps 1e-5; QuickGELU for OpenAI CLIP,
    GELU for OpenCLIP. Returns the projected image embedding (DreamSim's ``embedding`` feature)."""

    def __init__(
        self,
        quick_gelu: bool,
        patch: int = 16,
        dim: int = DIM,
        depth: int = DEPTH,
        heads: int = 12,
        output_dim: int = EMBED_DIM,
    ):
        super().__init__(patch=patch, dim=dim, depth=depth, heads=heads)
        self.pos_drop = nn.LayerNorm(dim)
        self.proj = nn.Parameter(torch.zeros(dim, output_dim))
        if quick_gelu:
            for block in self.blocks:
                block.mlp = _QuickGeluMlp(dim, block.mlp.fc1.out_features)
        for m in self.modules():
            if isinstance(m, nn.LayerNorm):
                m.eps = 1e-5

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(_tokens(self, x, self.pos_drop)[:, 0]) @ self.proj


def make_branch(index: int, **small) -> DinoViT:
    """Branch ``index`` of the ensemble (``small`` overrides depth/dim/heads for tests)."""
    if index == 0:
        return DinoBranch(**small)
    return ClipAsDino(quick_gelu=index == 1, **small)


class DreamSimEnsemble(nn.Module):
    """[0, 1] images (N, 3, 224, 224) -> the centred 1792-d DreamSim embedding (before the L2 norm)."""

    def __init__(self, branches: list[nn.Module] | None = None):
        super().__init__()
        self.branches = nn.ModuleList(branches if branches is not None else [make_branch(i) for i in range(3)])
        for i, (mean, std) in enumerate(BRANCH_STATS):
            self.register_buffer(f"mean{i}", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
            self.register_buffer(f"std{i}", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = [
            branch((x - getattr(self, f"mean{i}")) / getattr(self, f"std{i}")) for i, branch in enumerate(self.branches)
        ]
        embed = torch.cat(feats, dim=-1)
        return embed - embed.mean(dim=-1, keepdim=True)


# -- the LoRA adapter file ----------------------------------------------------------------------------
def lora_tree(r: int, dim: int = DIM, depth: int = DEPTH, branches: int = len(BRANCHES)) -> nn.Module:
    """A module whose state dict has the adapter file's keys and shapes (the PEFT names under
    ``PerceptualModel``): ``lora_A`` (r, dim) and ``lora_B`` (3 dim, r) for every ``attn.qkv``."""

    def node(**children: nn.Module) -> nn.Module:
        m = nn.Module()
        for k, v in children.items():
            m.add_module(k, v)
        return m

    def qkv() -> nn.Module:
        return node(lora_A=nn.Linear(dim, r, bias=False), lora_B=nn.Linear(r, 3 * dim, bias=False))

    extractors = nn.ModuleList(
        node(model=node(blocks=nn.ModuleList(node(attn=node(qkv=qkv())) for _ in range(depth))))
        for _ in range(branches)
    )
    return node(base_model=node(model=node(extractor_list=extractors)))


def lora_scaling(config: dict, what: str) -> tuple[int, float]:
    """(r, scaling) of a PEFT ``adapter_config.json``, refusing what a plain LoRA merge would get wrong."""
    targets = config.get("target_modules")
    targets = [targets] if isinstance(targets, str) else list(targets or [])
    unsupported = {
        k: config[k]
        for k in ("use_dora", "fan_in_fan_out", "rank_pattern", "alpha_pattern", "layers_to_transform")
        if config.get(k)
    }
    if (
        config.get("peft_type", "LORA") != "LORA"
        or targets != ["qkv"]
        or config.get("bias", "none") != "none"
        or unsupported
        or "r" not in config
        or "lora_alpha" not in config
    ):
        raise WeightsError(
            f"{what}: not DreamSim's LoRA config (want peft_type LORA, target_modules ['qkv'], "
            f"bias none, r and lora_alpha; got peft_type {config.get('peft_type')!r}, target_modules "
            f"{targets}, bias {config.get('bias')!r}, unsupported {unsupported}); is it the right file?"
        )
    r = int(config["r"])
    alpha = float(config["lora_alpha"])
    return r, alpha / (math.sqrt(r) if config.get("use_rslora") else r)


@torch.no_grad()
def merge_lora(model: DreamSimEnsemble, adapters: nn.Module, scaling: float) -> None:
    """``qkv.weight += scaling * lora_B @ lora_A`` in every block of every branch (PEFT's merge)."""
    for branch, extractor in zip(model.branches, adapters.base_model.model.extractor_list, strict=True):
        for block, lora in zip(branch.blocks, extractor.model.blocks, strict=True):
            a, b = lora.attn.qkv.lora_A.weight, lora.attn.qkv.lora_B.weight
            block.attn.qkv.weight += scaling * (b.float() @ a.float()).to(block.attn.qkv.weight.dtype)


# -- reading the cache (a file, or the release zip holding it) ----------------------------------------
def zip_member(name: str) -> str | None:
    """The member of the upstream release zip that manifest entry ``name`` is (its source after ``#``)."""
    source = manifest_entry(name).source
    return source.split("#", 1)[1] if "#" in source else None


@contextmanager
def opened(resolved: ResolvedWeight) -> Iterator[ResolvedWeight]:
    """The resolved file, or, when the cache holds the whole release zip, its member extracted to a temp dir."""
    member = zip_member(resolved.name)
    # torch's own format is a zip too: only a zip that holds the member counts as the release zip
    if member is not None and zipfile.is_zipfile(resolved.path):
        with zipfile.ZipFile(resolved.path) as zf:
            names = [n for n in zf.namelist() if n == member or n.endswith("/" + member)]
            if names:
                with tempfile.TemporaryDirectory() as tmp:
                    out = Path(tmp) / Path(member).name
                    with zf.open(names[0]) as src, out.open("wb") as dst:
                        while chunk := src.read(1 << 22):
                            dst.write(chunk)
                    yield replace(resolved, path=out)
                    return
    yield resolved


def _read_config(resolved: ResolvedWeight) -> dict:
    with opened(resolved) as f:
        try:
            return json.loads(f.path.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise WeightsError(
                f"{resolved.path} ({resolved.name}) is not a JSON adapter config ({exc}); fetch it "
                f"again with `harness weights prefetch {resolved.name}`"
            ) from exc


def _read_tensors(resolved: ResolvedWeight) -> dict[str, torch.Tensor]:
    with opened(resolved) as f:
        return read_state_dict(f)


def _load_branch(index: int, resolved: ResolvedWeight) -> DinoViT:
    with torch.device("meta"):  # no time spent on an init that the file overwrites
        branch = make_branch(index)
    branch = branch.to_empty(device="cpu")
    sd = _read_tensors(resolved)
    if index == 0:
        sd.pop("head.weight", None), sd.pop("head.bias", None)  # only in fine-tuned DINO variants
    load_strict(branch, sd, f"{resolved.name} (DreamSim {BRANCHES[index]} branch)")
    return branch


def load_adapters(lora: ResolvedWeight, config: ResolvedWeight) -> tuple[nn.Module, float]:
    r, scaling = lora_scaling(_read_config(config), f"{config.name} ({config.path})")
    adapters = lora_tree(r)
    load_strict(adapters, _read_tensors(lora), f"{lora.name} (DreamSim ensemble LoRA, r={r})")
    return adapters, scaling


@lru_cache(maxsize=2)
def _ensemble_from(files: tuple[ResolvedWeight, ...], device: str) -> tuple[nn.Module, bool]:
    towers, (lora, config) = files[:3], files[3:]
    model = DreamSimEnsemble([_load_branch(i, f) for i, f in enumerate(towers)])
    adapters, scaling = load_adapters(lora, config)
    merge_lora(model, adapters, scaling)
    return model.eval().to(device), any(f.is_random for f in files)


def load_ensemble(device: str) -> tuple[nn.Module, bool]:
    """Resolve every file first (a missing one fails naming it), then load: cached by the resolved files."""
    return _ensemble_from(resolve_all(WEIGHTS), device)


# -- preprocessing and the embedder ---------------------------------------------------------------------
@dataclass(frozen=True)
class FloatResize(Transform):
    """VBench-I2V's ``dreamsim_transform``: torchvision ``Resize((n, n), BICUBIC)`` on the float32 frames
    ``load_video`` returns (so no rounding to uint8 values), then /255; mean 0 / std 1 here because each
    DreamSim branch normalises itself."""

    @property
    def identity(self) -> str:
        return super().identity + "-float"


class DreamSimEmbedder(FrameEmbedder):
    """VBench-I2V i2v_background: ``dreamsim(pretrained=True)`` (ensemble, LoRA v0.2 release) on 224x224
    bicubic frames; fp32 everywhere, as upstream."""

    name = "dreamsim"
    transform = FloatResize(224, "bicubic", None, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), square=True, antialias=True)

    def _load(self):
        return load_ensemble(self.device)

    @property
    def identity(self) -> str:
        return "dreamsim-ensemble" + ("+random-weights" if self.random else "")


EMBEDDERS[DreamSimEmbedder.name] = DreamSimEmbedder


# -- random-init files in the upstream layouts --------------------------------------------------------
def randomise(module: nn.Module, seed: int, std: float = 0.02) -> dict[str, torch.Tensor]:
    """Seeded N(0, std) tensors for a module's state dict; LayerNorm weights 1, biases 0."""
    g = torch.Generator().manual_seed(seed)
    norms = {f"{n}." if n else "" for n, m in module.named_modules() if isinstance(m, nn.LayerNorm)}
    sd = {}
    for k, v in module.state_dict().items():
        prefix, leaf = k.rsplit(".", 1) if "." in k else ("", k)
        if prefix + "." in norms:
            sd[k] = torch.ones(v.shape) if leaf == "weight" else torch.zeros(v.shape)
        else:
            sd[k] = torch.randn(v.shape, generator=g) * std
    return sd


def _random_tower(index: int, seed: int):
    def write(path) -> None:
        with torch.device("meta"):
            shapes = make_branch(index)
        torch.save({"state_dict": randomise(shapes, seed)}, path)  # upstream's {'state_dict': ...} wrapper

    return write


random_initialiser("dreamsim_clip_vitb16")(_random_tower(1, 11))
random_initialiser("dreamsim_open_clip_vitb16")(_random_tower(2, 12))

RANDOM_LORA_CONFIG = {
    "peft_type": "LORA",
    "r": 16,
    "lora_alpha": 8,
    "lora_dropout": 0.3,
    "bias": "none",
    "target_modules": ["qkv"],
    "use_rslora": False,
    "use_dora": False,
    "fan_in_fan_out": False,
}


@random_initialiser(LORA_CONFIG)
def _random_lora_config(path) -> None:
    Path(path).write_text(json.dumps(RANDOM_LORA_CONFIG, indent=2))


@random_initialiser(LORA_WEIGHT)
def _random_lora(path) -> None:
    with torch.device("meta"):
        shapes = lora_tree(RANDOM_LORA_CONFIG["r"])
    save_file({k: v.contiguous() for k, v in randomise(shapes, 13).items()}, str(path))
