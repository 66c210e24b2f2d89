"""The conditioning image and prompt of each video of `harness eval --videos`.

An image-to-video model is judged against the image it was conditioned on (VBench-I2V's
``i2v_subject`` and ``i2v_background``), not against its own first frame, which would make
those dimensions measure nothing. A conditions file maps each video to its image and prompt:

* CSV with a header row, columns ``video``, ``image`` and optionally ``prompt``;
* JSONL, one object per line with the same keys.

Image paths are relative to the file's folder (or absolute). An image must have the video's
aspect ratio (within 1 %); it is resized to the video's frame size with PIL's bicubic filter.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ASPECT_TOLERANCE = 0.01


class ConditionsError(ValueError):
    """A conditions file that cannot be read; the message names the file, the line and the fix."""


@dataclass(frozen=True)
class VideoCondition:
    image: Path
    prompt: str | None


def read_conditions(path: Path) -> dict[str, VideoCondition]:
    """{video file name: its image and prompt}; a missing column, a duplicate video or an empty file is
    refused naming the line."""
    path = Path(path)
    if not path.is_file():
        raise ConditionsError(f"--conditions {path}: no such file")
    rows: list[tuple[int, dict]] = []
    if path.suffix.lower() == ".jsonl":
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if line.strip():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise ConditionsError(f"{path}:{n}: not JSON ({exc.msg})") from exc
                if not isinstance(row, dict):
                    raise ConditionsError(f"{path}:{n}: expected an object with video, image[, prompt]")
                rows.append((n, row))
    elif path.suffix.lower() == ".csv":
        with open(path, newline="") as f:
            rows = [(n, row) for n, row in enumerate(csv.DictReader(f), 2)]
    else:
        raise ConditionsError(f"--conditions {path}: expected a .csv or .jsonl file")
    if not rows:
        raise ConditionsError(f"{path}: no rows")
    out: dict[str, VideoCondition] = {}
    for n, row in rows:
        video, image = row.get("video"), row.get("image")
        if not video or not image:
            raise ConditionsError(f"{path}:{n}: each row needs 'video' and 'image' (got keys {sorted(row)})")
        name = Path(str(video)).name
        if name in out:
            raise ConditionsError(f"{path}:{n}: video {name!r} is listed twice")
        img = Path(str(image))
        prompt = row.get("prompt")
        out[name] = VideoCondition(img if img.is_absolute() else path.parent / img,
                                   str(prompt) if prompt not in (None, "") else None)
    return out


def conditioning_image(cond: VideoCondition, height: int, width: int) -> np.ndarray:
    """The image as (height, width, 3) uint8; a missing or unreadable file, or another aspect ratio, raises
    ConditionsError with the reason (the caller records the video as skipped)."""
    from PIL import Image, UnidentifiedImageError

    if not cond.image.is_file():
        raise ConditionsError(f"conditioning image {cond.image} does not exist")
    try:
        with Image.open(cond.image) as im:
            im = im.convert("RGB")
            w, h = im.size
            if abs((w / h) / (width / height) - 1) > ASPECT_TOLERANCE:
                raise ConditionsError(f"conditioning image {cond.image.name} is {w}x{h}, the video {width}x{height}: "
                                      "another aspect ratio (crop the image to the video's first)")
            if (w, h) != (width, height):
                im = im.resize((width, height), Image.Resampling.BICUBIC)
            return np.asarray(im, dtype=np.uint8)
    except (UnidentifiedImageError, OSError) as exc:
        raise ConditionsError(f"conditioning image {cond.image} cannot be read ({exc})") from exc
