"""Wan2.1 / Wan2.2 video diffusion models through diffusers, loaded from a local pipeline directory.

Three variants, each a diffusers pipeline directory (``model_index.json`` plus one sub-folder per
component) that is validated with :func:`check_model_dir` before any weight is read:

* ``wan21-t2v``  - Wan2.1 T2V 1.3B (``WanPipeline``): text only; the first frame is not used.
* ``wan21-i2v``  - Wan2.1 I2V 14B 480P (``WanImageToVideoPipeline``): the masked first-frame latent
  video is concatenated to the noisy latents along channels and the CLIP image embedding goes
  through the extra image cross-attention (``add_k_proj`` / ``add_v_proj``).
* ``wan22-ti2v`` - Wan2.2 TI2V 5B (``WanPipeline`` with ``expand_timesteps=True`` and the 48-channel
  Wan2.2 VAE): the clean first-frame latent replaces the first latent frame and its tokens get
  timestep 0, as ``WanImageToVideoPipeline`` does when ``expand_timesteps`` is set.

Conventions (shared with every adapter): pixels in [-1, 1], videos (B, C, T, H, W), latents are
the VAE's latents normalised with the VAE config's ``latents_mean`` / ``latents_std`` exactly as
the pipelines do, ``sigma`` in [0, 1] is the flow time, the transformer sees ``timestep = 1000 *
sigma`` (float, as FlowMatchEulerDiscreteScheduler passes it; UniPC passes the same value
truncated to an integer) and predicts the velocity ``noise - x0``.

``write_random_pipeline`` writes complete pipeline directories with random weights: ``tiny`` for
tests (loads with this adapter and with diffusers' own pipelines), ``real`` with the published
architecture configs (GPU machines only; the tokenizer is an offline stand-in, see there).

Where this differs from running the diffusers pipelines, and why:

* CFG's unconditional branch is the UMT5 embedding of the pipelines' default negative prompt ``""``
  (``Conditioning.null_values``); a custom negative prompt is not offered. The image conditions are
  kept in both branches, as upstream.
* TI2V: ``predict`` replaces the (unused) first-frame velocity by the one consistent with the clean
  frame, so samplers land on it and the training loss ignores it (see ``predict``).
* The first frame must already have the video resolution (the pipelines resize PIL inputs); the
  CLIP preprocessing runs in torch (identical at the CLIP resolution, see ``encode_image``).
* ``encode_video`` uses the mode of the VAE posterior (deterministic), as the pipelines do for
  the condition latents; no latent sampling noise is added to training targets.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from peft import LoraConfig

from harness.lru import LRUCache
from harness.models.base import Conditioning, ModelAdapter
from harness.models.components import Component, ModelDirError, check_model_dir
from harness.models.tiny_wan import save_wan_lora

FAMILY = "wan"
ImageCondition = Literal["none", "concat", "first_frame"]

# -- what each variant's directory must hold ----------------------------------------------------

TOKENIZER_CLASSES = ("T5TokenizerFast", "T5Tokenizer", "PreTrainedTokenizerFast", "TokenizersBackend", "AutoTokenizer")
SCHEDULER_CLASSES = ("UniPCMultistepScheduler", "FlowMatchEulerDiscreteScheduler")


def _components(image_encoder: bool) -> list[Component]:
    comps = [
        Component("transformer", ("WanTransformer3DModel",)),
        Component("vae", ("AutoencoderKLWan",)),
        Component("text_encoder", ("UMT5EncoderModel",)),
        Component("tokenizer", TOKENIZER_CLASSES, files=("tokenizer_config.json",), weights=False),
        Component("scheduler", SCHEDULER_CLASSES, files=("scheduler_config.json",), weights=False),
    ]
    if image_encoder:
        comps += [
            Component("image_encoder", ("CLIPVisionModel", "CLIPVisionModelWithProjection")),
            Component("image_processor", ("CLIPImageProcessor", "CLIPImageProcessorPil"),
                      files=("preprocessor_config.json",), weights=False),
        ]
    return comps


@dataclass(frozen=True)
class WanVariant:
    name: str
    repo: str  # upstream diffusers repository (for the download hint)
    pipeline: str  # diffusers pipeline class of the upstream directory
    image_condition: ImageCondition
    expand_timesteps: bool
    flow_shift: float  # the upstream scheduler's shift (informative: samplers choose their own)
    components: tuple[Component, ...]


VARIANTS: dict[str, WanVariant] = {
    "wan21-t2v": WanVariant("wan21-t2v", "Wan-AI/Wan2.1-T2V-1.3B-Diffusers", "WanPipeline", "none", False, 3.0,
                            tuple(_components(image_encoder=False))),
    "wan21-i2v": WanVariant("wan21-i2v", "Wan-AI/Wan2.1-I2V-14B-480P-Diffusers", "WanImageToVideoPipeline",
                            "concat", False, 3.0, tuple(_components(image_encoder=True))),
    "wan22-ti2v": WanVariant("wan22-ti2v", "Wan-AI/Wan2.2-TI2V-5B-Diffusers", "WanPipeline", "first_frame", True, 5.0,
                             tuple(_components(image_encoder=False))),
}

# Every attention projection of a WanTransformerBlock: self-attention (attn1), text cross-attention
# (attn2) and, in Wan2.1 I2V, the image cross-attention's key/value projections (attn2.add_k/v_proj).
ATTENTION_PROJECTIONS = ("to_q", "to_k", "to_v", "to_out.0")
IMAGE_ATTENTION_PROJECTIONS = ("add_k_proj", "add_v_proj")


def _variant(name: str) -> WanVariant:
    if name not in VARIANTS:
        raise ValueError(f"unknown Wan variant {name!r}; choose one of {', '.join(VARIANTS)}")
    return VARIANTS[name]


def check_geometry(num_frames: int, height: int, width: int, temporal: int, spatial: int,
                   patch: Sequence[int]) -> None:
    """num_frames = temporal*k + 1 and height/width divisible by VAE spatial factor x patch size."""
    if num_frames < 1 or (num_frames - 1) % temporal:
        k = max((num_frames - 1) // temporal, 0)
        raise ValueError(
            f"num_frames={num_frames} is not {temporal}k+1: the Wan VAE compresses time by {temporal} and keeps the "
            f"first frame, so num_frames - 1 must be divisible by {temporal} (nearest valid: {temporal * k + 1} or "
            f"{temporal * (k + 1) + 1})")
    for name, size, p in (("height", height, patch[1]), ("width", width, patch[2])):
        multiple = spatial * p
        if size < multiple or size % multiple:
            lo = max(size // multiple, 1) * multiple
            raise ValueError(
                f"{name}={size} is not divisible by {multiple} = VAE spatial factor {spatial} x transformer patch {p} "
                f"(nearest valid: {lo} or {lo + multiple})")


class TextEmbeddingCache(LRUCache[torch.Tensor]):
    """Caption -> UMT5 embedding of its true tokens (L_true, D), kept on the CPU, least recently used
    evicted beyond ``max_entries`` (0 disables caching). Exact: with the attention mask, a caption's
    embedding does not depend on the rest of the batch, and padding is re-added on the way out."""

    def __init__(self, max_entries: int = 1024):
        super().__init__(max_entries=max_entries)

    def put(self, caption: str, value: torch.Tensor) -> torch.Tensor:
        return super().put(caption, value.detach().to("cpu"))


class WanAdapter(ModelAdapter):
    """A Wan variant in latent space. ``model`` is the WanTransformer3DModel (LoRA goes there);
    the VAE, UMT5 text encoder and (Wan2.1 I2V) CLIP image encoder are frozen."""

    prediction_type: ClassVar[str] = "flow"
    family: ClassVar[str] = FAMILY

    def __init__(self, *, variant: str, transformer, vae, text_encoder, tokenizer, num_frames: int, height: int,
                 width: int, image_encoder=None, image_processor_config: dict | None = None,
                 max_sequence_length: int = 512, lora_targets: list[str] | None = None,
                 text_cache_size: int = 1024, scheduler_config: dict | None = None):
        self.spec = _variant(variant)
        self.variant = variant
        self.model, self.vae, self.text_encoder, self.tokenizer = transformer, vae, text_encoder, tokenizer
        self.image_encoder, self.image_processor_config = image_encoder, image_processor_config or {}
        self.scheduler_config = scheduler_config or {}
        if self.spec.image_condition == "concat" and image_encoder is None:
            raise ValueError(f"{variant} needs an image encoder (CLIPVisionModel)")
        self.num_frames, self.height, self.width = num_frames, height, width
        self.max_sequence_length = max_sequence_length
        self.lora_targets = lora_targets
        self.text_cache = TextEmbeddingCache(text_cache_size)

        cfg = vae.config
        self.z_dim = cfg.z_dim
        self.vae_temporal = getattr(cfg, "scale_factor_temporal", None) or 4
        self.vae_spatial = getattr(cfg, "scale_factor_spatial", None) or 8
        self.patch_size = tuple(transformer.config.patch_size)
        check_geometry(num_frames, height, width, self.vae_temporal, self.vae_spatial, self.patch_size)
        self._check_transformer()

        for module in (vae, text_encoder, image_encoder):
            if module is not None:
                module.requires_grad_(False).eval()
        transformer.requires_grad_(False).eval()

    def _check_transformer(self) -> None:
        cfg, kind = self.model.config, self.spec.image_condition
        expected_in = self.z_dim + (self.z_dim + self.vae_temporal if kind == "concat" else 0)
        problems = []
        if cfg.in_channels != expected_in:
            problems.append(f"transformer in_channels={cfg.in_channels}, expected {expected_in} for {self.variant} "
                            f"with a {self.z_dim}-channel VAE")
        if (cfg.out_channels or cfg.in_channels) != self.z_dim:
            problems.append(f"transformer out_channels={cfg.out_channels} but the VAE has z_dim={self.z_dim}")
        if (kind == "concat") != (cfg.image_dim is not None):
            problems.append(f"transformer image_dim={cfg.image_dim} does not fit {self.variant}")
        if kind == "first_frame" and self.patch_size[0] != 1:
            problems.append(f"expand_timesteps needs a temporal patch of 1, got {self.patch_size}")
        if problems:
            raise ModelDirError(f"{FAMILY}: the components do not form a {self.variant} model:\n  - "
                                + "\n  - ".join(problems))

    # -- loading -----------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path: str | Path, variant: str, num_frames: int, height: int, width: int,
                        dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
                        max_sequence_length: int = 512, lora_targets: list[str] | None = None, *,
                        encoder_dtype: torch.dtype | None = None, text_cache_size: int = 1024) -> WanAdapter:
        """Load from a local diffusers pipeline directory (nothing is downloaded).

        The transformer is loaded in ``dtype``; the VAE stays float32 (as the Wan pipelines
        recommend); the text / image encoders use ``encoder_dtype`` (default: float32 on the CPU,
        ``dtype`` elsewhere)."""
        from diffusers import AutoencoderKLWan, WanTransformer3DModel
        from transformers import AutoTokenizer, CLIPVisionModel, UMT5EncoderModel

        spec = _variant(variant)
        path = Path(path)
        index = check_model_dir(path, list(spec.components), f"{FAMILY}/{variant}", spec.repo)
        if bool(index.get("expand_timesteps")) != spec.expand_timesteps:
            raise ModelDirError(
                f"{FAMILY}/{variant}: {path / 'model_index.json'} has expand_timesteps="
                f"{index.get('expand_timesteps')}, but {variant} needs {spec.expand_timesteps} "
                f"(is this the {spec.repo} directory?)")
        # Geometry first: fail before reading any weights.
        vae_cfg = json.loads((path / "vae" / "config.json").read_text())
        tr_cfg = json.loads((path / "transformer" / "config.json").read_text())
        check_geometry(num_frames, height, width, vae_cfg.get("scale_factor_temporal") or 4,
                       vae_cfg.get("scale_factor_spatial") or 8, tr_cfg.get("patch_size", (1, 2, 2)))

        device = torch.device(device)
        if encoder_dtype is None:
            encoder_dtype = torch.float32 if device.type == "cpu" else dtype
        transformer = WanTransformer3DModel.from_pretrained(path, subfolder="transformer", torch_dtype=dtype,
                                                            local_files_only=True)
        vae = AutoencoderKLWan.from_pretrained(path, subfolder="vae", torch_dtype=torch.float32,
                                               local_files_only=True)
        text_encoder = UMT5EncoderModel.from_pretrained(path / "text_encoder", dtype=encoder_dtype,
                                                        local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(path / "tokenizer", local_files_only=True)
        image_encoder = image_processor_config = None
        if spec.image_condition == "concat":
            image_encoder = CLIPVisionModel.from_pretrained(path / "image_encoder", dtype=encoder_dtype,
                                                            local_files_only=True)
            image_processor_config = json.loads((path / "image_processor" / "preprocessor_config.json").read_text())
        scheduler_config = json.loads((path / "scheduler" / "scheduler_config.json").read_text())
        adapter = cls(variant=variant, transformer=transformer, vae=vae, text_encoder=text_encoder,
                      tokenizer=tokenizer, num_frames=num_frames, height=height, width=width,
                      image_encoder=image_encoder, image_processor_config=image_processor_config,
                      max_sequence_length=max_sequence_length, lora_targets=lora_targets,
                      text_cache_size=text_cache_size, scheduler_config=scheduler_config)
        return adapter.to(device)

    def to(self, device: str | torch.device) -> WanAdapter:
        for module in (self.model, self.vae, self.text_encoder, self.image_encoder):
            if module is not None:
                module.to(device)
        return self

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.dtype

    def pipeline_class(self):
        """The diffusers pipeline that runs this variant with an image (for cross-checks / export):
        WanImageToVideoPipeline for both image-conditioned variants, WanPipeline for T2V."""
        from diffusers import WanImageToVideoPipeline, WanPipeline

        return WanPipeline if self.spec.image_condition == "none" else WanImageToVideoPipeline

    # -- spaces --------------------------------------------------------------------------------------
    def latent_shape(self, batch: int) -> tuple[int, ...]:
        return (batch, self.z_dim, (self.num_frames - 1) // self.vae_temporal + 1,
                self.height // self.vae_spatial, self.width // self.vae_spatial)

    def _latent_stats(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(latents_mean, 1 / latents_std) shaped (1, z, 1, 1, 1), computed as the pipelines do."""
        cfg = self.vae.config
        mean = torch.tensor(cfg.latents_mean).view(1, cfg.z_dim, 1, 1, 1).to(like.device, like.dtype)
        inv_std = 1.0 / torch.tensor(cfg.latents_std).view(1, cfg.z_dim, 1, 1, 1).to(like.device, like.dtype)
        return mean, inv_std

    @torch.no_grad()
    def _vae_encode(self, video: torch.Tensor) -> torch.Tensor:
        """Pixels (B, 3, T, H, W) in [-1, 1] -> normalised latents. Uses the mode of the latent
        distribution (deterministic; the pipelines' ``sample_mode="argmax"`` for condition latents)."""
        vae_device = self.vae.device
        latents = self.vae.encode(video.to(vae_device, self.vae.dtype)).latent_dist.mode()
        mean, inv_std = self._latent_stats(latents)
        return (latents - mean) * inv_std

    def encode_video(self, video: torch.Tensor) -> torch.Tensor:
        if video.ndim != 5 or video.shape[1] != 3:
            raise ValueError(f"expected a video (B, 3, T, H, W), got {tuple(video.shape)}")
        check_geometry(video.shape[2], video.shape[3], video.shape[4], self.vae_temporal, self.vae_spatial,
                       self.patch_size)
        return self._vae_encode(video).to(self.device, torch.float32)

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Inverse of ``encode_video``: un-normalise as the pipelines do before ``vae.decode``."""
        z = latents.to(self.vae.device, self.vae.dtype)
        mean, inv_std = self._latent_stats(z)
        z = z / inv_std + mean
        return self.vae.decode(z, return_dict=False)[0].float()

    # -- conditions ----------------------------------------------------------------------------------
    @torch.no_grad()
    def _encode_text_uncached(self, captions: list[str]) -> list[torch.Tensor]:
        """UMT5 embeddings of the true tokens of each caption, as ``_get_t5_prompt_embeds``."""
        from diffusers.pipelines.wan.pipeline_wan import prompt_clean

        inputs = self.tokenizer([prompt_clean(c) for c in captions], padding="max_length",
                                max_length=self.max_sequence_length, truncation=True, add_special_tokens=True,
                                return_attention_mask=True, return_tensors="pt")
        ids, mask = inputs.input_ids, inputs.attention_mask
        seq_lens = mask.gt(0).sum(dim=1).long()
        dev = self.text_encoder.device
        hidden = self.text_encoder(ids.to(dev), mask.to(dev)).last_hidden_state
        return [h[:n] for h, n in zip(hidden, seq_lens, strict=True)]

    def encode_text(self, captions: Sequence[str]) -> torch.Tensor:
        """(B, max_sequence_length, D) caption embeddings, zero after each caption's true length
        (``WanPipeline._get_t5_prompt_embeds``). Repeated captions come from ``self.text_cache``."""
        captions = list(captions)
        found = {c: v for c in dict.fromkeys(captions) if (v := self.text_cache.get(c)) is not None}
        missing = [c for c in dict.fromkeys(captions) if c not in found]
        if missing:
            for c, v in zip(missing, self._encode_text_uncached(missing), strict=True):
                found[c] = v
                self.text_cache.put(c, v)
        rows = []
        for c in captions:
            u = found[c].to(self.device, self.text_encoder.dtype)
            rows.append(torch.cat([u, u.new_zeros(self.max_sequence_length - u.shape[0], u.shape[1])]))
        return torch.stack(rows).to(self.dtype)

    @torch.no_grad()
    def encode_image(self, first_frame: torch.Tensor) -> torch.Tensor:
        """CLIP penultimate hidden states (B, L, D) of the first frame, as ``WanImageToVideoPipeline.
        encode_image``. The CLIPImageProcessor steps (shortest-edge bicubic resize, centre crop,
        normalise) run in torch on the [0, 1] image, so they match the processor exactly when the
        frame already has the CLIP resolution and up to resampling differences otherwise."""
        if self.image_encoder is None:
            raise RuntimeError(f"{self.variant} has no image encoder")
        cfg = self.image_processor_config
        x = ((first_frame.float() + 1) / 2).clamp(0, 1).to(self.image_encoder.device)
        if cfg.get("do_resize", True):
            size = cfg.get("size", {"shortest_edge": 224})
            if "shortest_edge" in size:
                h, w = x.shape[-2:]
                short, long = (h, w) if h <= w else (w, h)
                new_short, new_long = size["shortest_edge"], int(size["shortest_edge"] * long / short)
                out = (new_short, new_long) if h <= w else (new_long, new_short)
            else:
                out = (size["height"], size["width"])
            if tuple(out) != tuple(x.shape[-2:]):
                x = F.interpolate(x, size=out, mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
        if cfg.get("do_center_crop", True):
            crop = cfg.get("crop_size", {"height": 224, "width": 224})
            ch, cw = (crop, crop) if isinstance(crop, int) else (crop["height"], crop["width"])
            top, left = (x.shape[-2] - ch) // 2, (x.shape[-1] - cw) // 2
            x = x[..., top:top + ch, left:left + cw]
        if cfg.get("do_normalize", True):
            mean = torch.tensor(cfg.get("image_mean", [0.48145466, 0.4578275, 0.40821073]), device=x.device)
            std = torch.tensor(cfg.get("image_std", [0.26862954, 0.26130258, 0.27577711]), device=x.device)
            x = (x - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)
        out = self.image_encoder(pixel_values=x.to(self.image_encoder.dtype), output_hidden_states=True)
        return out.hidden_states[-2].to(self.device, self.dtype)

    def _check_first_frame(self, first_frame: torch.Tensor, n: int) -> None:
        if first_frame.ndim != 4 or first_frame.shape[0] != n or first_frame.shape[1] != 3:
            raise ValueError(f"expected first frames (B={n}, 3, H, W), got {tuple(first_frame.shape)}")
        if tuple(first_frame.shape[-2:]) != (self.height, self.width):
            raise ValueError(f"first frame is {tuple(first_frame.shape[-2:])} but the adapter generates "
                             f"{(self.height, self.width)}; resize the frames to the video resolution")

    def encode_condition(self, first_frame: torch.Tensor, captions: list[str]) -> Conditioning:
        """Captions -> UMT5 embeddings; the first frame per variant:

        * T2V: no image condition; ``first_frame`` is an empty (B, 0) tensor (the frame is ignored).
        * I2V: ``first_frame`` = [4-channel first-frame mask, normalised VAE latents of (first frame,
          then num_frames - 1 zero frames)] along channels, (B, 4 + z, F, h, w), as
          ``WanImageToVideoPipeline.prepare_latents``; ``image`` = CLIP penultimate hidden states.
        * TI2V: ``first_frame`` = normalised VAE latent of the first frame alone, (B, z, 1, h, w).

        The unconditional CFG branch replaces only the caption (``null_zeroes=("text",)``), by the
        embedding of the empty negative prompt, as the pipelines' default."""
        captions = list(captions)
        n = len(captions)
        if first_frame.shape[0] != n:
            raise ValueError(f"{first_frame.shape[0]} first frames but {n} captions")
        text = self.encode_text(captions)
        kind, image = self.spec.image_condition, None
        if kind == "none":
            cond_latent = torch.zeros(n, 0, device=self.device)
        else:
            self._check_first_frame(first_frame, n)
            frame = first_frame.float().unsqueeze(2)  # (B, 3, 1, H, W)
            if kind == "first_frame":
                cond_latent = self._vae_encode(frame).to(self.device, torch.float32)
            else:
                video = torch.cat([frame, frame.new_zeros(n, 3, self.num_frames - 1, self.height, self.width)], 2)
                latent = self._vae_encode(video).to(self.device, torch.float32)
                mask = torch.zeros(n, self.vae_temporal, *latent.shape[2:], device=self.device)
                mask[:, :, 0] = 1.0  # the pipeline's first-frame mask, folded to (B, 4, F, h, w)
                cond_latent = torch.cat([mask, latent], dim=1)
                image = self.encode_image(first_frame)
        return Conditioning(cond_latent, text, tuple(captions), image=image, null_zeroes=("text",),
                            null_values={"text": self.encode_text([""])})

    # -- forward -------------------------------------------------------------------------------------
    def _sigma_batch(self, sigma, b: int) -> torch.Tensor:
        s = torch.as_tensor(sigma, dtype=torch.float32, device=self.device).reshape(-1)
        if s.numel() == 1:
            return s.expand(b)
        if s.numel() != b:
            raise ValueError(f"sigma has {s.numel()} values for a batch of {b}")
        return s

    def predict(self, x_t: torch.Tensor, sigma: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        """Velocity (noise - x0) for the noisy latents ``x_t`` at flow time ``sigma``.

        TI2V (``expand_timesteps``): as the pipeline, the first latent frame of the model input is
        the clean condition latent ``c`` and its tokens get timestep 0. The model's output for that
        frame is not used (the pipeline discards it); we return instead the velocity that is
        consistent with ``x_t`` and the clean frame, ``(x_t[:, :, 0] - c) / sigma``, so that

        * samplers integrate the first frame exactly onto ``c`` (an Euler step to sigma = 0 lands on
          ``c``), the analogue of the pipeline pasting ``c`` in before decoding, and
        * in training, when ``x0``'s first latent frame is ``c`` (the VAE is causal: encoding the
          video gives the first frame's latent there), it equals ``training_target`` exactly: the
          conditioning frame adds zero to the flow-matching loss and no gradient reaches the network
          from it (the loss mean still counts its elements, scaling the loss by (F - 1) / F).
        """
        b = x_t.shape[0]
        dev, dtype = self.device, self.dtype
        x = x_t.to(dev, dtype)
        sigma_b = self._sigma_batch(sigma, b)
        t = sigma_b * self.num_train_timesteps
        text = cond.text.to(dev, dtype)
        kind = self.spec.image_condition
        image = cond.image.to(dev, dtype) if (kind == "concat" and cond.image is not None) else None
        if kind == "concat":
            model_in, timestep = torch.cat([x, cond.first_frame.to(dev, dtype)], dim=1), t
        elif kind == "first_frame":
            clean = cond.first_frame.to(dev, dtype)
            model_in = torch.cat([clean, x[:, :, 1:]], dim=2)
            _, _, f, h, w = x.shape
            tokens = torch.ones(f, h // self.patch_size[1], w // self.patch_size[2], device=dev)
            tokens[0] = 0.0  # first-frame tokens are clean: timestep 0
            timestep = t[:, None] * tokens.flatten()[None, :]
        else:
            model_in, timestep = x, t
        out = self.model(hidden_states=model_in, timestep=timestep, encoder_hidden_states=text,
                         encoder_hidden_states_image=image, return_dict=False)[0]
        if kind == "first_frame":
            s = sigma_b.view(b, 1, 1, 1, 1)
            x0, c = x_t[:, :, :1].to(dev, torch.float32), cond.first_frame.to(dev, torch.float32)
            v0 = torch.where(s > 0, (x0 - c) / s.clamp_min(1e-12), torch.zeros_like(x0))
            out = torch.cat([v0, out[:, :, 1:].float()], dim=2)  # float32: v0 is exact, not rounded to bf16
        return out.to(x_t.device, x_t.dtype)

    # -- LoRA ------------------------------------------------------------------------------------------
    def default_lora_targets(self) -> list[str]:
        """Every attention projection: self-attention, text cross-attention and (Wan2.1 I2V) the image
        cross-attention's key / value projections."""
        targets = list(ATTENTION_PROJECTIONS)
        if any(getattr(m, "add_k_proj", None) is not None for m in self.model.modules()):
            targets += IMAGE_ATTENTION_PROJECTIONS
        return targets

    def add_lora(self, rank: int = 32, alpha: float = 32, target_modules: list[str] | None = None) -> None:
        """peft LoRA on the transformer (B = 0 at start), everything else frozen. LoRA parameters are
        kept in float32 even when the transformer is bf16/fp16 (as diffusers' training scripts do)."""
        targets = target_modules or self.lora_targets or self.default_lora_targets()
        self.model.requires_grad_(False)
        self.model.add_adapter(LoraConfig(r=rank, lora_alpha=alpha, target_modules=targets, init_lora_weights=True))
        for p in self.model.parameters():
            if p.requires_grad and p.dtype != torch.float32:
                p.data = p.data.float()

    def save_lora(self, directory: str | Path) -> Path:
        """``pytorch_lora_weights.safetensors`` in diffusers' format (keys ``transformer.<module>.lora_A/B
        .weight`` plus the LoraConfig as adapter metadata), written with ``WanPipeline.save_lora_weights``;
        load it with ``pipe.load_lora_weights(directory)``."""
        if not self.has_lora:
            raise RuntimeError("save_lora() needs LoRA adapters; call add_lora() first")
        return save_wan_lora(self.model, directory)


# -- random pipeline directories -------------------------------------------------------------------

WAN21_LATENTS_MEAN = [-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
                      0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921]
WAN21_LATENTS_STD = [2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
                     3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160]
WAN22_LATENTS_MEAN = [-0.2289, -0.0052, -0.1323, -0.2339, -0.2799, 0.0174, 0.1838, 0.1557,
                      -0.1382, 0.0542, 0.2813, 0.0891, 0.1570, -0.0098, 0.0375, -0.1825,
                      -0.2246, -0.1207, -0.0698, 0.5109, 0.2665, -0.2108, -0.2158, 0.2502,
                      -0.2055, -0.0322, 0.1109, 0.1567, -0.0729, 0.0899, -0.2799, -0.1230,
                      -0.0313, -0.1649, 0.0117, 0.0723, -0.2839, -0.2083, -0.0520, 0.3748,
                      0.0152, 0.1957, 0.1433, -0.2944, 0.3573, -0.0548, -0.1681, -0.0667]
WAN22_LATENTS_STD = [0.4765, 1.0364, 0.4514, 1.1677, 0.5313, 0.4990, 0.4818, 0.5013,
                     0.8158, 1.0344, 0.5894, 1.0901, 0.6885, 0.6165, 0.8454, 0.4978,
                     0.5759, 0.3523, 0.7135, 0.6804, 0.5833, 1.4146, 0.8986, 0.5659,
                     0.7069, 0.5338, 0.4889, 0.4917, 0.4069, 0.4999, 0.6866, 0.4093,
                     0.5709, 0.6065, 0.6415, 0.4944, 0.5726, 1.2042, 0.5458, 1.6887,
                     0.3971, 1.0600, 0.3943, 0.5537, 0.5444, 0.4089, 0.7468, 0.7744]

CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]

# A small caption corpus for the offline stand-in tokenizer (BPE over lower/upper case, digits, punctuation).
_TOKENIZER_CORPUS = (
    "a red circle moves left fast. a blue square stays still. the camera pans slowly to the right while a "
    "person walks along the beach at sunset. a cat and a dog play in the garden; the dog jumps over a fence. "
    "cars drive through a busy city street at night with bright lights. waves crash on rocks, birds fly above "
    "the sea. a close-up of hands cooking food in a kitchen. zoom in on a green tree swaying in the wind. "
    "0 1 2 3 4 5 6 7 8 9"
)


def _transformer_config(variant: str, size: str) -> dict:
    spec = _variant(variant)
    z = 48 if variant == "wan22-ti2v" else 16
    in_ch = z + (z + 4 if spec.image_condition == "concat" else 0)
    if size == "real":
        base = dict(patch_size=[1, 2, 2], attention_head_dim=128, cross_attn_norm=True, eps=1e-6, freq_dim=256,
                    qk_norm="rms_norm_across_heads", text_dim=4096, rope_max_seq_len=1024, in_channels=in_ch,
                    out_channels=z)
        if variant == "wan21-t2v":
            return dict(base, num_attention_heads=12, num_layers=30, ffn_dim=8960)
        if variant == "wan21-i2v":
            return dict(base, num_attention_heads=40, num_layers=40, ffn_dim=13824, image_dim=1280,
                        added_kv_proj_dim=5120)
        return dict(base, num_attention_heads=24, num_layers=30, ffn_dim=14336)
    cfg = dict(patch_size=[1, 2, 2], attention_head_dim=16, num_attention_heads=2, num_layers=2, ffn_dim=32,
               freq_dim=16, text_dim=32, cross_attn_norm=True, eps=1e-6, qk_norm="rms_norm_across_heads",
               rope_max_seq_len=64, in_channels=in_ch, out_channels=z)
    if spec.image_condition == "concat":
        cfg.update(image_dim=32, added_kv_proj_dim=32)  # added_kv_proj_dim = inner dim, as 5120 upstream
    return cfg


def _vae_config(variant: str, size: str) -> dict:
    if variant == "wan22-ti2v":
        cfg = dict(base_dim=160, decoder_base_dim=256, z_dim=48, is_residual=True, in_channels=12, out_channels=12,
                   patch_size=2, scale_factor_temporal=4, scale_factor_spatial=16, dim_mult=[1, 2, 4, 4],
                   num_res_blocks=2, attn_scales=[], temperal_downsample=[False, True, True], dropout=0.0,
                   latents_mean=WAN22_LATENTS_MEAN, latents_std=WAN22_LATENTS_STD)
    else:
        cfg = dict(base_dim=96, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
                   temperal_downsample=[False, True, True], dropout=0.0, scale_factor_temporal=4,
                   scale_factor_spatial=8, latents_mean=WAN21_LATENTS_MEAN, latents_std=WAN21_LATENTS_STD)
    if size == "tiny":  # same compression factors and latent channels, a fraction of the width
        cfg.update(base_dim=4, num_res_blocks=1)
        if "decoder_base_dim" in cfg:
            cfg["decoder_base_dim"] = 4
    return cfg


def _text_encoder_config(size: str) -> dict:
    if size == "real":  # google/umt5-xxl (encoder only is used)
        return dict(vocab_size=256384, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_decoder_layers=24,
                    num_heads=64, relative_attention_num_buckets=32, relative_attention_max_distance=128,
                    dropout_rate=0.1, layer_norm_epsilon=1e-6, feed_forward_proj="gated-gelu",
                    tie_word_embeddings=False, is_encoder_decoder=True, pad_token_id=0, eos_token_id=1,
                    decoder_start_token_id=0)
    return dict(vocab_size=256, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                relative_attention_num_buckets=8, relative_attention_max_distance=16, dropout_rate=0.0,
                feed_forward_proj="gated-gelu", tie_word_embeddings=False, pad_token_id=0, eos_token_id=1,
                decoder_start_token_id=0)


def _image_encoder_config(size: str) -> dict:
    if size == "real":  # open-clip ViT-H/14 vision tower (laion/CLIP-ViT-H-14-laion2B-s32B-b79K)
        return dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=16,
                    image_size=224, patch_size=14, projection_dim=1024, hidden_act="gelu", layer_norm_eps=1e-5)
    return dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=32,
                patch_size=8, projection_dim=16, hidden_act="gelu", layer_norm_eps=1e-5)


def component_configs(variant: str, size: Literal["tiny", "real"] = "tiny") -> dict[str, dict]:
    """Constructor arguments of every weighted component (the published configs for ``real``)."""
    if size not in ("tiny", "real"):
        raise ValueError(f"size must be 'tiny' or 'real', got {size!r}")
    spec = _variant(variant)
    cfgs = {"transformer": _transformer_config(variant, size), "vae": _vae_config(variant, size),
            "text_encoder": _text_encoder_config(size)}
    if spec.image_condition == "concat":
        cfgs["image_encoder"] = _image_encoder_config(size)
    return cfgs


def build_component(name: str, config: dict):
    """A randomly initialised component from ``component_configs`` (wrap in ``torch.device('meta')``
    to get the architecture without memory)."""
    from diffusers import AutoencoderKLWan, WanTransformer3DModel
    from transformers import CLIPVisionConfig, CLIPVisionModel, UMT5Config, UMT5EncoderModel

    if name == "transformer":
        return WanTransformer3DModel(**config)
    if name == "vae":
        return AutoencoderKLWan(**config)
    if name == "text_encoder":
        return UMT5EncoderModel(UMT5Config(**config))
    if name == "image_encoder":
        return CLIPVisionModel(CLIPVisionConfig(**config))
    raise ValueError(f"unknown component {name!r}")


def build_tokenizer(max_length: int = 512):
    """An offline tokenizer with T5's conventions (<pad>=0, </s>=1 appended, <unk>=2): a BPE trained on a
    built-in caption corpus with the ``tokenizers`` library. A stand-in for umt5-xxl's SentencePiece
    vocabulary, which cannot be produced without downloading it."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    alphabet = list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,;:!?'\"-()")
    trainer = trainers.BpeTrainer(vocab_size=200, special_tokens=["<pad>", "</s>", "<unk>"],
                                  initial_alphabet=alphabet, show_progress=False)
    tok.train_from_iterator([_TOKENIZER_CORPUS], trainer)
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>",
                                                       special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                                   model_max_length=max_length)


def _image_processor_config(size: str) -> dict:
    px = 224 if size == "real" else 32
    return {"crop_size": {"height": px, "width": px}, "do_center_crop": True, "do_convert_rgb": True,
            "do_normalize": True, "do_rescale": True, "do_resize": True, "image_mean": CLIP_MEAN,
            "image_processor_type": "CLIPImageProcessor", "image_std": CLIP_STD, "resample": 3,
            "rescale_factor": 1 / 255, "size": {"shortest_edge": px}}


def write_random_pipeline(path: str | Path, variant: str, size: Literal["tiny", "real"] = "tiny", seed: int = 0,
                          dtype: torch.dtype | None = None, device: str | torch.device = "cpu") -> Path:
    """Write a complete diffusers pipeline directory for ``variant`` with random weights.

    ``tiny``: every component at a few thousand to a few hundred thousand parameters (same latent
    channels and compression factors as upstream), float32, seconds on a CPU. ``real``: the published
    architectures (transformer ~1.4B / ~16.4B / ~5.0B, UMT5-XXL encoder, Wan2.1 / Wan2.2 VAE, ViT-H/14
    CLIP), default bfloat16; only for a GPU machine (pass ``device="cuda"`` to initialise there). The
    tokenizer is the offline stand-in of ``build_tokenizer`` in both sizes. Components are built and
    saved one at a time, so peak memory is the largest component.
    """
    from diffusers import UniPCMultistepScheduler
    from diffusers import __version__ as diffusers_version

    spec = _variant(variant)
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    dtype = dtype or (torch.bfloat16 if size == "real" else torch.float32)
    index: dict = {"_class_name": spec.pipeline, "_diffusers_version": diffusers_version}
    libraries = {"transformer": "diffusers", "vae": "diffusers", "text_encoder": "transformers",
                 "image_encoder": "transformers"}
    for i, (name, config) in enumerate(component_configs(variant, size).items()):
        torch.manual_seed(seed * 1000 + i)
        with torch.device(device):
            module = build_component(name, config)
        # The Wan VAE stays float32 (the pipelines run it in float32).
        target = torch.float32 if name == "vae" else dtype
        if module.dtype != target:
            module = module.to(target)
        module.save_pretrained(path / name, safe_serialization=True, max_shard_size="5GB")
        index[name] = [libraries[name], type(module).__name__]
        del module
    tokenizer = build_tokenizer()
    tokenizer.save_pretrained(path / "tokenizer")
    index["tokenizer"] = ["transformers", "PreTrainedTokenizerFast"]
    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                        num_train_timesteps=1000, flow_shift=spec.flow_shift)
    scheduler.save_pretrained(path / "scheduler")
    index["scheduler"] = ["diffusers", "UniPCMultistepScheduler"]
    if spec.image_condition == "concat":
        (path / "image_processor").mkdir(exist_ok=True)
        (path / "image_processor" / "preprocessor_config.json").write_text(
            json.dumps(_image_processor_config(size), indent=2))
        index["image_processor"] = ["transformers", "CLIPImageProcessor"]
    index.update(boundary_ratio=None, expand_timesteps=spec.expand_timesteps, transformer_2=[None, None])
    (path / "model_index.json").write_text(json.dumps(dict(sorted(index.items())), indent=2))
    return path


def parameter_count(module: torch.nn.Module) -> int:
    return sum(math.prod(p.shape) for p in module.parameters())
