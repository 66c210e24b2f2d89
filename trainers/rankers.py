"""Rankers: decide which of two videos of the same condition is preferred.

Online preference methods (Diffusion-APO's online and half-online stages) need one at
every step. ``latent_rm`` (the default on the tiny world) is the learned reward model fitted to
rater labels, the training judge every method shares; ``oracle`` is the tiny world's ground-truth
judge (mean of sprite integrity and motion adherence), which is also the evaluation's, so a run
ranked by it is marked in every table; ``LabelRanker`` answers from imported human labels;
``VLMRanker`` asks a local vision-language model the paper's hierarchical four-way
question (``ranker: vlm`` with ``ranker_model: DIR`` in a stage).
"""

from __future__ import annotations

import hashlib
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np

from harness.data.preferences import PairSet, oracle_score
from harness.data.world import WorldConfig
from harness.extras import has_module, missing_extra


@dataclass(frozen=True)
class RankCondition:
    """What a ranker may read of a pair's condition: the conditioning image and caption a model sees,
    and (for the oracle alone) the world's clip spec."""

    spec: object
    first_frame: np.ndarray  # (H, W, 3) uint8
    caption: str


def _spec(condition: object) -> object:
    return condition.spec if isinstance(condition, RankCondition) else condition


class Ranker(ABC):
    """Pairwise: which of two videos (uint8 (T, H, W, 3) frames) of one condition is better."""

    name: ClassVar[str]

    @abstractmethod
    def prefer(self, a: np.ndarray, b: np.ndarray, condition: object) -> int:
        """+1 if ``a`` is preferred, -1 if ``b``, 0 for a tie (no preference: the pair is skipped)."""


class OracleRanker(Ranker):
    """Scores each video on its own (the oracle's mean of integrity and adherence) and compares."""

    name = "oracle"

    def __init__(self, world: WorldConfig):
        self._score = oracle_score(world)

    def prefer(self, a: np.ndarray, b: np.ndarray, condition: object) -> int:
        return _compare(self._score(a, _spec(condition)), self._score(b, _spec(condition)))


def _compare(sa: float, sb: float) -> int:
    if not (np.isfinite(sa) and np.isfinite(sb)) or sa == sb:
        return 0
    return 1 if sa > sb else -1


class RewardRanker(Ranker):
    """The learned reward model (fitted to rater labels, never to the evaluation oracle) scores each
    video from its frames, conditioning image and caption; the higher score wins."""

    name = "latent_rm"

    def __init__(self, model_dir: str | None = None):
        from harness.scorers.latent_rm import load_reward_model, video_scorer

        self.model = load_reward_model(model_dir)
        self._score = video_scorer(self.model)

    def prefer(self, a: np.ndarray, b: np.ndarray, condition: object) -> int:
        if not isinstance(condition, RankCondition):
            raise TypeError("the latent_rm ranker reads the conditioning image and caption: pass a RankCondition")
        s = self._score(np.stack([a, b]), np.stack([condition.first_frame] * 2), [condition.caption] * 2)
        return _compare(float(s[0]), float(s[1]))


class LabelRanker(Ranker):
    """Imported human labels: the preference of a pair is looked up by the videos' content.

    Built from a pair set (e.g. ``import_pairs`` of a labels file); a pair it has no label
    for is a tie (skipped), never a guess.
    """

    name = "labels"

    def __init__(self, pairs: PairSet):
        self._labels: dict[tuple[str, str], int] = {}
        for w, lo in zip(pairs.chosen, pairs.rejected, strict=True):
            self._labels[(_digest(w), _digest(lo))] = 1
            self._labels[(_digest(lo), _digest(w))] = -1
        self.unknown = 0


    def prefer(self, a: np.ndarray, b: np.ndarray, condition: object) -> int:
        label = self._labels.get((_digest(a), _digest(b)), 0)
        self.unknown += label == 0
        return label


def _digest(video: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(video).tobytes()).hexdigest()


def get_ranker(name: str, world: WorldConfig, model_dir: str | None = None) -> Ranker:
    if name == "oracle":
        return OracleRanker(world)
    if name == "latent_rm":
        return RewardRanker(model_dir)
    if name == "vlm":
        if not model_dir:
            raise ValueError("ranker 'vlm' needs ranker_model: a local directory with the model's weights")
        return VLMRanker(model_dir)
    raise ValueError(f"unknown ranker {name!r} for online ranking; available: latent_rm, oracle, vlm "
                     "(human labels rank only the pairs they label: LabelRanker)")


_VLM_OPTIONS: dict[str, tuple[str, str, str, str]] = {
    prompt: (
        "Video 1 has a lower degree of visual distortion.",
        "Video 2 has a lower degree of visual distortion.",
        f"Both videos have similar degrees of distortion, but Video 1 features {motion}.",
        f"Both videos have similar degrees of distortion, but Video 2 features {motion}.",
    )
    for prompt, motion in (("human", "larger camera movement or richer human actions"),
                           ("non_human", "richer and more natural motion"))
}
_VLM_CRITERIA = (
    "Compare Video 1 and Video 2, two generated videos. First judge visual distortion: deformed, "
    "melting or flickering objects and broken structure; the video with less distortion is better. Only if "
    "both are about equally distorted, judge dynamics: prefer larger, livelier and more natural motion, and "
    "never prefer a video that is nearly static. Answer with ONLY one of these four options, copied exactly:"
)
_BARE_LABEL = re.compile(r"^\s*\(?([1-4])(?:[.)](?!\d)|\s*$)")


def _normalize(text: str) -> str:
    return " ".join(text.lower().split())


class VLMRanker(Ranker):
    """Diffusion-APO's pairwise vision-language ranker, hierarchical four-way answer.

    A local image-text-to-text model (``AutoProcessor`` + ``AutoModelForImageTextToText``,
    loaded with ``local_files_only=True``: the weights must already be in ``model_dir``,
    nothing is downloaded) is asked which of two videos is better: less visual distortion
    first, then (distortion being similar) richer motion. It answers one of four options:
    1/3 prefer Video 1 (``a``), 2/4 prefer Video 2 (``b``); an unparseable answer is a
    tie (the pair is skipped) and is counted in ``unparsed``. The condition is not shown
    to the model: the criteria are about quality, not prompt adherence.

    Departure from the paper (which feeds both clips as videos, 40 frames each, tagged
    with vision ids, to Qwen3-VL-8B): transformers' video processors need torchvision,
    which the CPU install leaves out, so each video is fed as ``num_frames`` uniformly
    sampled frames given as images, in order "Video 1:", the frames of ``a``, "Video 2:",
    the frames of ``b``, then the instruction. A model whose processor class itself has a
    video processor (Qwen2/2.5/3-VL and others) still cannot be loaded by ``AutoProcessor``
    without torchvision; that fails with a one-line :class:`~harness.extras.MissingExtraError`
    naming the ``full`` extra, which provides it.
    """

    name = "vlm"

    def __init__(
        self,
        model_dir: str | Path,
        prompt: Literal["human", "non_human"] = "non_human",
        num_frames: int = 8,
        max_new_tokens: int = 24,
        *,
        device: str = "cpu",
        dtype: str = "auto",
    ):
        if prompt not in _VLM_OPTIONS:
            raise ValueError(f"prompt must be 'human' or 'non_human', got {prompt!r}")
        if num_frames < 1 or max_new_tokens < 1:
            raise ValueError("num_frames and max_new_tokens must be positive")
        model_dir = Path(model_dir)
        if not model_dir.is_dir():
            raise FileNotFoundError(
                f"VLM ranker model directory {str(model_dir)!r} not found: the model's weights (config, "
                "processor, tokenizer and weight files) must be placed there; nothing is downloaded at run time"
            )
        from transformers import AutoModelForImageTextToText, AutoProcessor

        try:
            self.processor = AutoProcessor.from_pretrained(model_dir, local_files_only=True)
        except ImportError as e:
            if not has_module("torchvision"):  # transformers' video processors import it
                raise missing_extra("torchvision", "full", f"the processor of {str(model_dir)!r}") from e
            raise ImportError(f"cannot load the processor of {str(model_dir)!r}: {' '.join(str(e).split())}") from e
        self.model = AutoModelForImageTextToText.from_pretrained(
            model_dir, local_files_only=True, dtype=dtype
        ).to(device).eval()
        self.model_dir = model_dir
        self.prompt = prompt
        self.options = _VLM_OPTIONS[prompt]
        self.num_frames = num_frames
        self.max_new_tokens = max_new_tokens
        self.last_output: str | None = None
        self.last_label: int | None = None
        self.unparsed = 0

    def instruction(self) -> str:
        return _VLM_CRITERIA + "\n" + "\n".join(f"{i}. {o}" for i, o in enumerate(self.options, 1))

    @staticmethod
    def parse_label(text: str) -> int | None:
        """1-4 for an answer holding one of the option sentences (either prompt's wording;
        case and whitespace ignored; the earliest wins) or starting with a bare option
        number ("2", "3.", "1)"); ``None`` otherwise."""
        norm = _normalize(text)
        found: dict[int, int] = {}
        for options in _VLM_OPTIONS.values():
            for label, option in enumerate(options, 1):
                at = norm.find(_normalize(option).rstrip("."))
                if at >= 0:
                    found[label] = min(at, found.get(label, at))
        if found:
            return min(found, key=found.__getitem__)
        bare = _BARE_LABEL.match(text)
        return int(bare.group(1)) if bare else None

    def _frames(self, video: np.ndarray) -> list:
        from PIL import Image

        video = np.asarray(video)
        if video.ndim != 4 or video.shape[-1] != 3 or video.dtype != np.uint8 or len(video) == 0:
            raise ValueError(f"expected uint8 (T, H, W, 3) frames, got {video.dtype} {video.shape}")
        idx = np.linspace(0, len(video) - 1, min(self.num_frames, len(video))).round().astype(int)
        return [Image.fromarray(np.ascontiguousarray(video[i])) for i in idx]

    def _generate(self, a: np.ndarray, b: np.ndarray) -> str:
        import torch

        fa, fb = self._frames(a), self._frames(b)
        content = ([{"type": "text", "text": "Video 1:"}] + [{"type": "image"}] * len(fa)
                   + [{"type": "text", "text": "Video 2:"}] + [{"type": "image"}] * len(fb)
                   + [{"type": "text", "text": self.instruction()}])
        text = self.processor.apply_chat_template(
            [{"role": "user", "content": content}], add_generation_prompt=True, tokenize=False
        )
        inputs = self.processor(text=[text], images=fa + fb, return_tensors="pt")
        inputs = inputs.to(self.model.device, dtype=self.model.dtype)
        with torch.inference_mode():
            out = self.model.generate(**inputs, do_sample=False, max_new_tokens=self.max_new_tokens)
        new = out[0, inputs["input_ids"].shape[1]:]
        return self.processor.decode(new, skip_special_tokens=True).strip()


    def prefer(self, a: np.ndarray, b: np.ndarray, condition: object) -> int:
        self.last_output = self._generate(a, b)
        self.last_label = self.parse_label(self.last_output)
        if self.last_label is None:
            self.unparsed += 1
            return 0
        return 1 if self.last_label in (1, 3) else -1
