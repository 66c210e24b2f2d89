"""The tiny base model: diffusers' WanTransformer3DModel with a tiny config, in pixel space.

Image-to-video conditioning follows Wan2.1 I2V: the first frame (zero-padded over
time) and a first-frame mask are concatenated to the noisy video along channels;
the caption goes through cross-attention. There is no VAE: the model denoises
pixels in [-1, 1], so encode/decode are the identity.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import WanTransformer3DModel
from diffusers.models.attention_dispatch import dispatch_attention_fn
from diffusers.models.transformers.transformer_wan import (
    WanAttention,
    WanAttnProcessor,
    WanRotaryPosEmbed,
    _get_qkv_projections,
)
from peft import LoraConfig
from pydantic import BaseModel, ConfigDict, Field

from harness.models.base import Conditioning, ModelAdapter
from harness.models.text import HashCaptionEncoder

WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
DEFAULT_LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]  # self- and cross-attention


class CachedWanRope(WanRotaryPosEmbed):
    """diffusers' WanRotaryPosEmbed, its output kept per (frames, height, width, device, dtype).

    The rotary table depends only on the video's shape and the module's fixed buffers, but diffusers
    rebuilds it every forward in a dozen small ops (a sizeable share of a tiny-model step on CPU). The
    cached tensors are the ones the first call returned, so outputs are bitwise those of the uncached
    module (tests/test_rope_cache.py); they are built outside inference mode (usable in training) and
    never need a gradient (the buffers have none)."""

    def forward(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        _, _, t, h, w = hidden_states.shape
        buf = self.freqs_cos
        key = (t, h, w, buf.device, buf.dtype, buf._version, self.freqs_sin._version)
        cache = self.__dict__.setdefault("_rope_cache", {})
        hit = cache.get(key)
        if hit is None:
            with torch.inference_mode(False), torch.no_grad():
                hit = cache[key] = super().forward(hidden_states)
        return hit


def cache_rope(model: WanTransformer3DModel) -> WanTransformer3DModel:
    """Make ``model``'s rotary embedding a CachedWanRope (same buffers, no parameters: the state dict is
    unchanged)."""
    if type(model.rope) is WanRotaryPosEmbed:
        model.rope.__class__ = CachedWanRope
    return model


class ComplexRopeWanAttnProcessor(WanAttnProcessor):
    """diffusers' WanAttnProcessor with the rotary embedding applied as one complex multiplication.

    diffusers rotates the interleaved pairs (x1, x2) of each head with strided slices and writes
    (x1 cos - x2 sin, x1 sin + x2 cos) into a fresh tensor, element by element: on the tiny model on CPU
    that took 5 % of all compute, forward and backward (many small strided ops). Read as complex numbers
    x1 + i x2 times cos + i sin, the product's real and imaginary parts are those same two expressions,
    each product and sum rounded once, so the outputs and gradients are bitwise diffusers' (checked on the
    whole model, forward and backward, in tests/test_rope_cache.py). The rest of the call (projections, q/k
    norms, attention through diffusers' dispatcher, output projection) is diffusers'. Cases this
    does not cover (image cross-attention, fused projections, a dtype other than float32) go to diffusers'
    own processor."""

    def __init__(self) -> None:
        super().__init__()
        self._table: tuple[torch.Tensor, torch.Tensor] | None = None  # (freqs_cos it was built from, complex)

    def _complex_table(self, freqs_cos: torch.Tensor, freqs_sin: torch.Tensor) -> torch.Tensor:
        if self._table is None or self._table[0] is not freqs_cos:  # CachedWanRope returns the same tensors
            with torch.inference_mode(False), torch.no_grad():  # built while sampling, it serves training too
                self._table = (freqs_cos, torch.complex(freqs_cos[..., 0::2], freqs_sin[..., 1::2]))
        return self._table[1]

    def __call__(self, attn: WanAttention, hidden_states: torch.Tensor,
                 encoder_hidden_states: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                 rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        if (rotary_emb is None or attn.add_k_proj is not None or getattr(attn, "fused_projections", False)
                or hidden_states.dtype != torch.float32 or rotary_emb[0].dtype != torch.float32):
            return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, rotary_emb)
        query, key, value = _get_qkv_projections(attn, hidden_states, encoder_hidden_states)
        query = attn.norm_q(query).unflatten(2, (attn.heads, -1))
        key = attn.norm_k(key).unflatten(2, (attn.heads, -1))
        value = value.unflatten(2, (attn.heads, -1))
        table = self._complex_table(*rotary_emb)
        query, key = (torch.view_as_real(torch.view_as_complex(x.unflatten(-1, (-1, 2))) * table).flatten(-2)
                      for x in (query, key))
        out = dispatch_attention_fn(query, key, value, attn_mask=attention_mask, dropout_p=0.0, is_causal=False,
                                    backend=self._attention_backend,
                                    parallel_config=self._parallel_config if encoder_hidden_states is None else None)
        out = out.flatten(2, 3).type_as(query)
        return attn.to_out[1](attn.to_out[0](out))


def complex_rope_attention(model: WanTransformer3DModel) -> WanTransformer3DModel:
    """Give every self-attention of ``model`` a ComplexRopeWanAttnProcessor (no parameters change)."""
    for block in model.blocks:
        if type(block.attn1.processor) is WanAttnProcessor:
            block.attn1.set_processor(ComplexRopeWanAttnProcessor())
    return model


class TinyModelConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    num_layers: int = Field(4, ge=1)
    num_attention_heads: int = Field(2, ge=1)
    attention_head_dim: int = Field(48, ge=6)
    ffn_dim: int = Field(256, ge=1)
    freq_dim: int = Field(64, ge=2)
    text_dim: int = Field(32, ge=2)
    max_caption_tokens: int = Field(32, ge=1)
    patch_size: tuple[int, int, int] = (1, 2, 2)


class TinyWanAdapter(ModelAdapter):
    prediction_type = "flow"
    channels = 3

    def __init__(self, config: TinyModelConfig, num_frames: int, resolution: int):
        self.config, self.num_frames, self.resolution = config, num_frames, resolution
        self.text_encoder = HashCaptionEncoder(config.text_dim, config.max_caption_tokens)
        self.model = WanTransformer3DModel(
            patch_size=config.patch_size,
            num_attention_heads=config.num_attention_heads,
            attention_head_dim=config.attention_head_dim,
            in_channels=2 * self.channels + 1,  # noisy video + first-frame video + mask
            out_channels=self.channels,
            text_dim=config.text_dim,
            freq_dim=config.freq_dim,
            ffn_dim=config.ffn_dim,
            num_layers=config.num_layers,
            rope_max_seq_len=64,
        )
        cache_rope(self.model)
        complex_rope_attention(self.model)

    # -- persistence -----------------------------------------------------------
    def save(self, directory: str | Path) -> Path:
        """diffusers layout (config.json + safetensors) plus the adapter's own settings."""
        directory = Path(directory)
        self.model.save_pretrained(directory, safe_serialization=True)
        meta = {"adapter": "tiny-wan", "config": self.config.model_dump(mode="json"),
                "num_frames": self.num_frames, "resolution": self.resolution}
        (directory / "adapter.json").write_text(json.dumps(meta, indent=2))
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> TinyWanAdapter:
        directory = Path(directory)
        meta_path, weights = directory / "adapter.json", directory / WEIGHTS_NAME
        for needed in (meta_path, weights):
            if not needed.is_file():
                raise FileNotFoundError(
                    f"checkpoint file missing: {needed}; re-create it with "
                    "`harness build base --preset tiny --out <dir>`"
                )
        meta = json.loads(meta_path.read_text())
        adapter = cls(TinyModelConfig(**meta["config"]), meta["num_frames"], meta["resolution"])
        from safetensors.torch import load_file

        adapter.model.load_state_dict(load_file(weights), strict=True)
        return adapter

    # -- spaces ------------------------------------------------------------------
    def encode_video(self, video: torch.Tensor) -> torch.Tensor:
        return video

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        return latents

    def latent_shape(self, batch: int) -> tuple[int, ...]:
        return (batch, self.channels, self.num_frames, self.resolution, self.resolution)

    def encode_condition(self, first_frame: torch.Tensor, captions: list[str]) -> Conditioning:
        if first_frame.shape[0] != len(captions):
            raise ValueError(f"{first_frame.shape[0]} first frames but {len(captions)} captions")
        return Conditioning(first_frame, self.text_encoder(list(captions)), tuple(captions))

    # -- forward -----------------------------------------------------------------
    def predict(self, x_t: torch.Tensor, sigma: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        b, _, t, h, w = x_t.shape
        image = torch.zeros_like(x_t)
        image[:, :, 0] = cond.first_frame.to(x_t.dtype)
        mask = torch.zeros(b, 1, t, h, w, dtype=x_t.dtype, device=x_t.device)
        mask[:, :, 0] = 1.0
        timestep = torch.as_tensor(sigma, dtype=x_t.dtype, device=x_t.device).expand(b)
        return self.model(
            torch.cat([x_t, image, mask], dim=1),
            timestep * self.num_train_timesteps,
            cond.text.to(x_t.dtype),
            return_dict=False,
        )[0]

    # -- LoRA ------------------------------------------------------------------
    def add_lora(self, rank: int, alpha: float, target_modules: list[str] | None = None) -> None:
        self.model.requires_grad_(False)
        self.model.add_adapter(
            LoraConfig(r=rank, lora_alpha=alpha, target_modules=target_modules or DEFAULT_LORA_TARGETS)
        )

    def save_lora(self, directory: str | Path) -> Path:
        if not self.has_lora:
            raise RuntimeError("save_lora() needs LoRA adapters; call add_lora() first")
        return save_wan_lora(self.model, directory)


def save_wan_lora(model: WanTransformer3DModel, directory: str | Path) -> Path:
    """A Wan transformer's LoRA as ``pytorch_lora_weights.safetensors`` in diffusers' format (keys
    ``transformer.<module>.lora_A/B.weight``, the LoraConfig as metadata), written with
    ``WanPipeline.save_lora_weights``: ``pipe.load_lora_weights(directory)`` loads it, and so does
    ``transformer.load_lora_adapter(directory, weight_name=..., prefix="transformer")``. (Given the file
    path instead of the folder, diffusers 0.42 skips the metadata and takes alpha = rank.)"""
    from diffusers import WanPipeline
    from peft.utils import get_peft_model_state_dict

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in get_peft_model_state_dict(model).items()}
    WanPipeline.save_lora_weights(directory, transformer_lora_layers=state,
                                  transformer_lora_adapter_metadata=model.peft_config["default"].to_dict())
    return directory / "pytorch_lora_weights.safetensors"

