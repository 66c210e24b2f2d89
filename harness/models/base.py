"""The ModelAdapter interface: what trainers, samplers and evaluators may assume.

An adapter hides one model family: latent encode/decode (identity for the tiny
pixel model, the VAE for real ones), condition encoding (first frame, caption),
the prediction type and its noising/target convention, the forward pass, LoRA
through peft, and a reference context that disables the adapters so the frozen
base model serves as the reference policy without a second copy in memory.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import ClassVar

import torch
from torch import nn


@dataclass
class Conditioning:
    """Encoded conditions for a batch; ``null_text`` gives the CFG unconditional branch.

    ``first_frame`` is the image condition in the model's space: pixels for the tiny model,
    VAE latents for real families (any trailing shape; Wan I2V keeps its masked latent video
    here). ``image`` holds an image encoder's embedding where the family has one (CLIP for
    Wan2.1 I2V and SVD). ``null_zeroes`` names the fields the unconditional branch replaces:
    the caption for Wan, the image embedding and image latents for SVD (as upstream), by zeros
    unless ``null_values`` holds that field's (1, ...) unconditional value (Wan: the UMT5
    embedding of the empty negative prompt, as the pipelines encode it).
    """

    first_frame: torch.Tensor  # (B, ...) in the model's space
    text: torch.Tensor  # (B, L, D) caption embeddings (SVD: the CLIP image embedding)
    captions: tuple[str, ...]
    image: torch.Tensor | None = None  # (B, L, D) image-encoder embedding, or None
    null_zeroes: tuple[str, ...] = ("text",)
    null_values: dict[str, torch.Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return self.first_frame.shape[0]

    def null_text(self) -> Conditioning:
        def null(name: str, value: torch.Tensor) -> torch.Tensor:
            if name in self.null_values:
                return self.null_values[name].to(value.device, value.dtype).expand_as(value)
            return torch.zeros_like(value)

        nulls = {f: null(f, getattr(self, f)) for f in self.null_zeroes if getattr(self, f) is not None}
        return replace(self, **nulls, captions=("",) * len(self))

    def index(self, idx: slice | torch.Tensor) -> Conditioning:
        rows = range(len(self))[idx] if isinstance(idx, slice) else idx.tolist()
        return replace(self, **{f: getattr(self, f)[idx] for f in self._tensor_fields()},
                       captions=tuple(self.captions[i] for i in rows))

    def _tensor_fields(self) -> list[str]:
        return [f for f in ("first_frame", "text", "image") if getattr(self, f) is not None]

    @staticmethod
    def cat(parts: list[Conditioning]) -> Conditioning:
        head = parts[0]
        return replace(head, **{f: torch.cat([getattr(p, f) for p in parts]) for f in head._tensor_fields()},
                       captions=tuple(c for p in parts for c in p.captions))


@dataclass
class PassCount:
    """The video model's work inside a ``counting_passes()`` context, in rows (one video, one network
    evaluation): ``forward`` rows of ``ModelAdapter.predict`` (a batch of B counts B, a CFG batch of
    2B counts 2B; a partial forward, such as the latent reward model reading one block's tokens, counts
    as a whole one), ``backward`` rows whose prediction a gradient flowed back through (once per
    backward: a prediction back-propagated twice counts twice), and ``samples`` as trainers report
    them (``count_samples``). ``passes`` counts a backward as two forwards (trainers/base.py)."""

    forward: int = 0
    backward: int = 0
    samples: int = 0

    @property
    def passes(self) -> int:
        return self.forward + 2 * self.backward


# The innermost open count (None: an `uncounted()` block); every adapter's predict reports to it.
_COUNTS: list[PassCount | None] = []
_DEPTH = [0]  # predict calls in progress: a subclass's predict that calls its parent's counts once


@contextlib.contextmanager
def counting_passes() -> Iterator[PassCount]:
    """Count the passes of every adapter's model (the policy, its reference and EMA weights, and a
    separate backbone such as the latent reward model's) while the context is open."""
    count = PassCount()
    _COUNTS.append(count)
    try:
        yield count
    finally:
        _COUNTS.pop()


@contextlib.contextmanager
def uncounted() -> Iterator[None]:
    """Passes run for a measurement inside a counted step (PG-DPO's own-pairs Gamma), not for training."""
    _COUNTS.append(None)
    try:
        yield
    finally:
        _COUNTS.pop()


def count_samples(n: int) -> None:
    """``n`` more samples seen by the open count (a no-op outside one, e.g. in a probe's replay)."""
    if _COUNTS and _COUNTS[-1] is not None:
        _COUNTS[-1].samples += n


def _counted(predict: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    @functools.wraps(predict)
    def wrapper(self: ModelAdapter, x_t: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        count = _COUNTS[-1] if _COUNTS and not _DEPTH[0] else None
        rows = int(x_t.shape[0])
        if count is not None:
            count.forward += rows  # before the call: a forward stopped early (block features) still counts
        _DEPTH[0] += 1
        try:
            out = predict(self, x_t, *args, **kwargs)
        finally:
            _DEPTH[0] -= 1
        if count is not None and isinstance(out, torch.Tensor) and out.requires_grad:
            def backward(grad: torch.Tensor) -> None:
                count.backward += rows

            out.register_hook(backward)
        return out

    wrapper.__counted__ = True  # type: ignore[attr-defined]
    return wrapper


class ModelAdapter(ABC):
    """One model family. Tensors follow diffusers' video layout (B, C, T, H, W).

    Every family's ``predict`` is wrapped so that ``counting_passes()`` sees it (the trainers' compute
    axis): a forward pass of the model goes through ``predict`` only."""

    prediction_type: ClassVar[str]  # "flow" (velocity = noise - x0), later "v" / "eps"
    num_train_timesteps: ClassVar[int] = 1000

    model: nn.Module

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        own = cls.__dict__.get("predict")
        if own is not None and not getattr(own, "__counted__", False) and not getattr(own, "__isabstractmethod__",
                                                                                       False):
            cls.predict = _counted(own)  # type: ignore[method-assign]

    # -- spaces ---------------------------------------------------------------
    @abstractmethod
    def encode_video(self, video: torch.Tensor) -> torch.Tensor:
        """Pixels in [-1, 1] -> the space the model denoises in."""

    @abstractmethod
    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Inverse of ``encode_video``."""

    @abstractmethod
    def encode_condition(self, first_frame: torch.Tensor, captions: list[str]) -> Conditioning:
        """First frame in pixels (B, 3, H, W) in [-1, 1] plus captions -> Conditioning."""

    @abstractmethod
    def latent_shape(self, batch: int) -> tuple[int, ...]:
        """Shape of a batch of latents the sampler starts from."""

    # -- the diffusion convention ---------------------------------------------
    # The trainers draw noise and sigmas from CPU generators (reproducible on any device); they meet
    # the model's latents, on its device, here.
    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """Rectified-flow interpolation x_sigma = (1 - sigma) x0 + sigma noise, on x0's device."""
        s = _expand(sigma, x0)
        return (1 - s) * x0 + s * noise.to(x0.device)

    def training_target(self, x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """Velocity d x_sigma / d sigma = noise - x0."""
        return noise.to(x0.device) - x0

    @abstractmethod
    def predict(self, x_t: torch.Tensor, sigma: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        """The network's output (a velocity for ``prediction_type == 'flow'``)."""

    # -- parameters, LoRA and the reference policy ------------------------------
    @abstractmethod
    def add_lora(self, rank: int, alpha: float, target_modules: list[str] | None = None) -> None:
        """Attach peft LoRA adapters and freeze everything else."""

    def lora_state_dict(self) -> dict[str, torch.Tensor]:
        from peft.utils import get_peft_model_state_dict

        return get_peft_model_state_dict(self.model)

    def load_lora_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        from peft.utils import set_peft_model_state_dict

        result = set_peft_model_state_dict(self.model, state)
        if getattr(result, "unexpected_keys", None):
            raise ValueError(f"LoRA state has keys the model lacks: {result.unexpected_keys[:5]}")

    def save_lora(self, directory: str | Path) -> Path:
        """The LoRA in the format the family's diffusers pipeline loads with ``load_lora_weights``."""
        raise NotImplementedError(f"{type(self).__name__} has no diffusers LoRA export")

    def enable_gradient_checkpointing(self) -> None:
        """Recompute activations in the backward pass (diffusers' per-block checkpointing)."""
        self.model.enable_gradient_checkpointing()

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    @torch.no_grad()
    def fold_lora(self) -> None:
        """Add the LoRA update into the frozen base weights and restart the adapters
        (A re-drawn, B = 0): the current policy becomes the new reference, as a staged
        pipeline needs when each stage's reference is the result of the previous one."""
        from peft.tuners.lora import LoraLayer

        layers = [m for m in self.model.modules() if isinstance(m, LoraLayer)]
        if not layers:
            raise RuntimeError("fold_lora() needs LoRA adapters; call add_lora() first")
        for layer in layers:
            for name in layer.active_adapters:
                base = layer.get_base_layer()
                base.weight += layer.get_delta_weight(name).to(base.weight.dtype)
                layer.reset_lora_parameters(name, init_lora_weights=True)

    @contextlib.contextmanager
    def skip_blocks(self, indices: Sequence[int]) -> Iterator[None]:
        """The weak model of spatiotemporal skip guidance (STG): the given transformer blocks
        pass their input through unchanged while the context is open."""
        blocks = getattr(self.model, "blocks", None)
        if blocks is None:
            raise NotImplementedError(f"{type(self).__name__} has no transformer `blocks` to skip")
        bad = [i for i in indices if not -len(blocks) <= i < len(blocks)]
        if bad:
            raise ValueError(f"cannot skip blocks {bad}: the model has {len(blocks)} blocks")

        def passthrough(module, args, kwargs, output):
            return args[0] if args else kwargs["hidden_states"]

        handles = [blocks[i].register_forward_hook(passthrough, with_kwargs=True) for i in indices]
        try:
            yield
        finally:
            for h in handles:
                h.remove()

    @property
    def has_lora(self) -> bool:
        return bool(getattr(self.model, "_hf_peft_config_loaded", False))

    @contextlib.contextmanager
    def reference(self) -> Iterator[None]:
        """Run the frozen base model: LoRA adapters disabled, re-enabled on exit."""
        if not self.has_lora:
            raise RuntimeError("reference() needs LoRA adapters; call add_lora() first")
        self.model.disable_adapters()
        try:
            yield
        finally:
            self.model.enable_adapters()


def _expand(sigma: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    sigma = torch.as_tensor(sigma, dtype=like.dtype, device=like.device)
    if sigma.ndim == 0:
        return sigma
    return sigma.reshape(-1, *([1] * (like.ndim - 1)))


def weights_digest(adapter: ModelAdapter) -> str:
    """Hash of the base weights (LoRA tensors excluded, and peft's ``base_layer`` renaming undone, so
    that a model gives one digest with or without adapters): part of the pair cache key and of the
    record of a latent reward model fitted on this model's features."""
    h = hashlib.sha256()
    for name, tensor in sorted((k.replace(".base_layer.", "."), v) for k, v in adapter.model.state_dict().items()):
        if "lora_" in name:
            continue
        h.update(name.encode())
        h.update(tensor.detach().cpu().float().numpy().tobytes())
    return h.hexdigest()[:16]
