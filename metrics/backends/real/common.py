"""Loading upstream checkpoints into our modules: unwrap, strip prefixes, load strictly.

Every real backend loads the upstream file's own state-dict layout, so a user drops the
published file into the weight cache unchanged. Where our module comes from a library
(transformers) with other parameter names, the backend converts the upstream keys and
``load_strict`` still checks that every upstream tensor was used and every parameter filled.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from harness.weights import ResolvedWeight, WeightsError

WRAPPER_KEYS = ("state_dict", "model", "module", "model_state", "params")


def read_state_dict(weight: ResolvedWeight, strip_prefixes: tuple[str, ...] = ("module.",)) -> dict[str, torch.Tensor]:
    """Tensors of a torch pickle, TorchScript archive or safetensors file, unwrapped and de-prefixed."""
    path = weight.path
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        sd: Mapping = load_file(str(path))
    else:
        try:
            sd = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as pickle_error:  # noqa: BLE001 - a TorchScript archive is the other upstream format
            try:
                sd = torch.jit.load(str(path), map_location="cpu").state_dict()
            except Exception:  # noqa: BLE001
                raise WeightsError(f"{path} ({weight.name}) is neither a torch state dict nor a TorchScript "
                                   f"archive ({pickle_error}); fetch it again with "
                                   f"`harness weights prefetch {weight.name}`") from pickle_error
    while isinstance(sd, Mapping) and len(sd) == 1 and next(iter(sd)) in WRAPPER_KEYS:
        sd = next(iter(sd.values()))
    if isinstance(sd, Mapping):
        for key in WRAPPER_KEYS[:2]:  # checkpoints that also carry optimiser state, epoch, ...
            if key in sd and isinstance(sd[key], Mapping):
                sd = sd[key]
                break
    if not isinstance(sd, Mapping):
        raise WeightsError(f"{path} ({weight.name}) does not hold a state dict")
    out = {}
    for key, value in sd.items():
        for prefix in strip_prefixes:
            if key.startswith(prefix):
                key = key[len(prefix):]
        if isinstance(value, torch.Tensor):
            out[key] = value
    return out


def load_strict(module: torch.nn.Module, state_dict: Mapping[str, torch.Tensor], what: str) -> None:
    """``load_state_dict(strict=True)`` with an error that lists what is missing or extra."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    shapes = [f"{k}: file {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}"
              for k in sorted(set(own) & set(state_dict)) if tuple(own[k].shape) != tuple(state_dict[k].shape)]
    if missing or unexpected or shapes:
        raise WeightsError(f"{what}: the checkpoint does not match the architecture: "
                           f"{len(missing)} missing {missing[:6]}, {len(unexpected)} unexpected {unexpected[:6]}, "
                           f"{len(shapes)} shape mismatches {shapes[:4]}; is it the right file?")
    module.load_state_dict(state_dict, strict=True)


def save_random(state_dict: Mapping[str, torch.Tensor], path) -> None:
    """Write a random-init state dict as a plain torch pickle (what ``read_state_dict`` reads)."""
    torch.save({k: v.detach().clone().contiguous() for k, v in state_dict.items()}, path)
