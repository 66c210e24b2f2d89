"""The local weight cache: manifest, checks, errors that name the fix, random-init marking, offline."""

from __future__ import annotations

import os

import pytest
import torch

from harness import weights
from harness.weights import WeightsError


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv(weights.CACHE_ENV, str(tmp_path))
    return tmp_path


def test_manifest_entries_are_complete():
    entries = weights.load_manifest()
    assert {"dino_vitb16", "clip_vit_b32", "clip_vit_l14", "laion_aesthetic_l14"} <= set(entries)
    for e in entries.values():
        assert e.path and e.source.startswith("http") and e.licence and e.used_by, e
        assert e.sha256 is None or len(e.sha256) == 64
    # OpenAI publishes CLIP's checksum in the URL: the manifest pins it.
    clip = entries["clip_vit_b32"]
    assert clip.sha256 and clip.sha256 in clip.source


def test_missing_file_names_the_file_the_checksum_and_the_prefetch_command(cache):
    with pytest.raises(WeightsError) as err:
        weights.resolve("clip_vit_b32")
    msg = str(err.value)
    assert "clip/ViT-B-32.pt" in msg and weights.manifest_entry("clip_vit_b32").sha256 in msg
    assert "harness weights prefetch clip_vit_b32" in msg
    with pytest.raises(WeightsError, match="no weight file named 'nope'"):
        weights.resolve("nope")


def test_random_init_is_marked_and_a_changed_file_is_refused(cache):
    import harness.scorers.backends.real  # noqa: F401

    (r,) = weights.init_random(["laion_aesthetic_l14"], log=lambda _: None)
    assert r.is_random and r.origin == "random-init" and r.path.is_file()
    assert weights.resolve("laion_aesthetic_l14").is_random
    torch.save({"weight": torch.zeros(1, 768), "bias": torch.zeros(1)}, r.path)  # someone replaced the file
    with pytest.raises(WeightsError, match="corrupt, truncated or a different release"):
        weights.resolve("laion_aesthetic_l14")
    rows = {row["name"]: row for row in weights.status()}
    assert rows["laion_aesthetic_l14"]["state"] == "corrupt" and rows["dino_vitb16"]["state"] == "missing"


def test_prefetch_from_a_folder_pins_unpublished_checksums_and_refuses_wrong_pinned_ones(cache, tmp_path_factory):
    src = tmp_path_factory.mktemp("upstream")
    torch.save({"weight": torch.ones(1, 768), "bias": torch.ones(1)}, src / "sa_0_4_vit_l_14_linear.pth")
    (r,) = weights.prefetch(["laion_aesthetic_l14"], source_dir=src, log=lambda _: None)
    assert r.origin == "upstream-unpinned" and not r.is_random  # trust on first download, said as such
    assert weights.prefetch(["laion_aesthetic_l14"], source_dir=src, log=lambda _: None)[0].sha256 == r.sha256
    (src / "ViT-B-32.pt").write_bytes(b"not the OpenAI file")
    with pytest.raises(WeightsError, match="the manifest pins 40d36571"):
        weights.prefetch(["clip_vit_b32"], source_dir=src, log=lambda _: None)
    assert not (cache / "clip" / "ViT-B-32.pt").exists()  # a wrong file is never installed


def test_init_random_never_overwrites_a_real_file(cache, tmp_path_factory):
    src = tmp_path_factory.mktemp("upstream")
    torch.save({"weight": torch.ones(1, 768), "bias": torch.ones(1)}, src / "sa_0_4_vit_l_14_linear.pth")
    weights.prefetch(["laion_aesthetic_l14"], source_dir=src, log=lambda _: None)
    with pytest.raises(WeightsError, match="refusing to overwrite"):
        weights.init_random(["laion_aesthetic_l14"], log=lambda _: None)


def test_cli_forces_hub_libraries_offline(cache, monkeypatch):
    from typer.testing import CliRunner

    from harness.cli import app

    for key in weights.OFFLINE_ENV:
        monkeypatch.delenv(key, raising=False)
    result = CliRunner().invoke(app, ["weights", "status"])
    assert result.exit_code == 0, result.output
    assert all(os.environ.get(k) == "1" for k in weights.OFFLINE_ENV)
    assert "missing" in result.output and "harness weights prefetch" in result.output
