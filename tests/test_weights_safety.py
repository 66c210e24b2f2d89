"""Weight files that can run code are loaded only with a pinned digest; prefetch fails cleanly offline."""

from __future__ import annotations

import io
import os
import socket
import urllib.error
import urllib.request
from dataclasses import replace

import pytest
import torch
from typer.testing import CliRunner

from harness import weights
from harness.cli import app
from harness.scorers.backends.real import i3d as i3d_mod
from harness.scorers.backends.real.common import load_torchscript, read_state_dict
from harness.weights import WeightsError

QUIET = {"log": lambda _msg: None}


class _Detector(torch.nn.Module):
    def forward(self, x: torch.Tensor, rescale: bool = False, resize: bool = False,
                return_features: bool = False) -> torch.Tensor:
        return torch.zeros(x.shape[0], 400)


class _Payload:  # a pickled object of any class needs code to rebuild: the safe loader refuses it
    pass


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv(weights.CACHE_ENV, str(tmp_path / "cache"))
    for key in weights.OFFLINE_ENV:  # the CLI sets these; keep them from leaking into other tests
        monkeypatch.setenv(key, "1")
    return tmp_path / "cache"


@pytest.fixture()
def jit_calls(monkeypatch):
    """Records every torch.jit.load; refuses to load unless the test sets ``allowed``."""
    real, calls = torch.jit.load, []

    def spy(*args, **kwargs):
        calls.append(args)
        if not spy.allowed:
            raise AssertionError("torch.jit.load was called")
        return real(*args, **kwargs)

    spy.allowed = False
    monkeypatch.setattr(torch.jit, "load", spy)
    return spy, calls


def _fetch_detector(tmp_path) -> weights.ResolvedWeight:
    src = tmp_path / "src"
    src.mkdir(exist_ok=True)
    torch.jit.save(torch.jit.script(_Detector()), str(src / "i3d_torchscript.pt"))
    (fetched,) = weights.prefetch(["i3d_torchscript"], source_dir=src, **QUIET)
    return fetched


# ------------------------------------------------------------- item 8: executable files need a pinned digest
def test_an_unpinned_torchscript_file_is_refused_before_jit_load_and_runs_once_pinned(cache, tmp_path, jit_calls):
    spy, calls = jit_calls
    fetched = _fetch_detector(tmp_path)
    assert fetched.origin == "upstream-unpinned"  # trust on first download: not enough for code
    row = {r["name"]: r for r in weights.status()}["i3d_torchscript"]
    assert row["state"] == "ok" and "harness weights pin i3d_torchscript" in row["detail"]
    with pytest.raises(WeightsError) as err:
        i3d_mod.I3DExtractor("i3d_torchscript")
    msg = str(err.value)
    assert "sha256 is not pinned" in msg and fetched.sha256 in msg and "\n" not in msg
    assert "`harness weights pin i3d_torchscript --sha256 HEX`" in msg
    assert calls == []

    res = CliRunner().invoke(app, ["weights", "pin", "i3d_torchscript", "--sha256", "0" * 64])
    assert res.exit_code == 2 and f"has sha256 {fetched.sha256}, not the {'0' * 64} given" in res.output
    res = CliRunner().invoke(app, ["weights", "pin", "i3d_torchscript", "--sha256", "abc"])
    assert res.exit_code == 2 and "64 hex digits" in res.output
    assert weights.resolve("i3d_torchscript").origin == "upstream-unpinned" and calls == []

    res = CliRunner().invoke(app, ["weights", "pin", "i3d_torchscript", "--sha256", fetched.sha256.upper()])
    assert res.exit_code == 0, res.output
    assert weights.resolve("i3d_torchscript").origin == "user-pinned"
    spy.allowed = True
    ext = i3d_mod.I3DExtractor("i3d_torchscript")
    assert ext(torch.zeros(1, 2, 3, 8, 8)).shape == (1, 400) and len(calls) == 1
    # fetching the same file again keeps the user's pin
    weights.prefetch(["i3d_torchscript"], source_dir=tmp_path / "src", **QUIET)
    assert weights.resolve("i3d_torchscript").origin == "user-pinned"


def test_a_changed_torchscript_file_is_refused_even_when_the_hash_memo_is_fooled(cache, tmp_path, jit_calls):
    """The digest is taken of the bytes that would be loaded, not from the (size, mtime) memo."""
    _, calls = jit_calls
    fetched = _fetch_detector(tmp_path)
    weights.pin("i3d_torchscript", fetched.sha256, **QUIET)
    data = bytearray(fetched.path.read_bytes())
    data[-30] ^= 0xFF  # same size, restored mtime: the memo still says the pinned digest
    st = fetched.path.stat()
    fetched.path.write_bytes(bytes(data))
    os.utime(fetched.path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert weights.resolve("i3d_torchscript").sha256 == fetched.sha256
    with pytest.raises(WeightsError, match=f"not the pinned {fetched.sha256}"):
        i3d_mod.I3DExtractor("i3d_torchscript")
    assert calls == []


def test_a_torchscript_entry_pinned_in_the_manifest_loads_and_a_mismatch_is_refused(cache, tmp_path, jit_calls,
                                                                                     monkeypatch):
    spy, calls = jit_calls
    src = tmp_path / "src"
    src.mkdir()
    torch.jit.save(torch.jit.script(_Detector()), str(src / "i3d_torchscript.pt"))
    manifest = weights.load_manifest()
    pinned = weights._fresh_sha256(src / "i3d_torchscript.pt")
    manifest["i3d_torchscript"] = replace(manifest["i3d_torchscript"], sha256=pinned)
    monkeypatch.setattr(weights, "load_manifest", lambda *a: dict(manifest))
    (fetched,) = weights.prefetch(["i3d_torchscript"], source_dir=src, **QUIET)
    assert fetched.origin == "upstream"
    spy.allowed = True
    i3d_mod.I3DExtractor("i3d_torchscript")
    assert len(calls) == 1
    changed = replace(fetched, path=tmp_path / "other" / "fvd" / "i3d_torchscript.pt")
    changed.path.parent.mkdir(parents=True)
    changed.path.write_bytes(b"x" + fetched.path.read_bytes())
    with pytest.raises(WeightsError, match=f"not the pinned {pinned}"):
        load_torchscript(changed)
    assert len(calls) == 1


@pytest.mark.parametrize(
    ("write", "reason"),
    [
        (lambda p: torch.jit.save(torch.jit.script(torch.nn.Linear(768, 1)), str(p)), "it is a TorchScript archive"),
        (lambda p: torch.save({"weight": _Payload()}, p), "Unsupported global"),
    ],
    ids=["torchscript", "pickled-object"],
)
def test_a_state_dict_entry_that_fails_the_safe_load_never_reaches_jit_load(cache, tmp_path, jit_calls, write,
                                                                             reason):
    _, calls = jit_calls
    src = tmp_path / "src"
    src.mkdir()
    write(src / "sa_0_4_vit_l_14_linear.pth")
    weights.prefetch(["laion_aesthetic_l14"], source_dir=src, **QUIET)  # manifest format: torch
    with pytest.raises(WeightsError) as err:
        read_state_dict(weights.resolve("laion_aesthetic_l14"))
    msg = str(err.value)
    assert "aesthetic/sa_0_4_vit_l_14_linear.pth" in msg and "manifest format is torch" in msg and reason in msg
    assert "prefetch laion_aesthetic_l14" in msg and "\n" not in msg
    assert calls == []


def test_random_init_files_of_torchscript_entries_still_load_and_are_never_pinned(cache, jit_calls):
    import harness.scorers.backends.real  # noqa: F401

    _, calls = jit_calls
    (r,) = weights.init_random(["clip_vit_b32"], **QUIET)  # a state dict, read without jit
    assert r.is_random and any(k.startswith("visual.") for k in read_state_dict(r))
    assert calls == []
    (r,) = weights.init_random(["laion_aesthetic_l14"], **QUIET)
    with pytest.raises(WeightsError, match="random-init file; only real weights are pinned"):
        weights.pin("laion_aesthetic_l14", r.sha256, **QUIET)  # its numbers must stay marked random
    assert weights.resolve("laion_aesthetic_l14").is_random


# ------------------------------------------------------------- item 10: prefetch without a network
def _invoke_prefetch(name):
    return CliRunner().invoke(app, ["weights", "prefetch", name])


def test_prefetch_without_network_is_one_clear_line_and_leaves_nothing(cache, monkeypatch):
    def offline(*_a, **_k):
        raise urllib.error.URLError(socket.gaierror(-3, "Temporary failure in name resolution"))

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    res = _invoke_prefetch("i3d_kinetics400")
    assert res.exit_code == 2
    errors = [line for line in res.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and res.output.rstrip().endswith(errors[0])
    assert "fvd/rgb_imagenet.pt" in errors[0] and "raw.githubusercontent.com is unreachable" in errors[0]
    assert "Temporary failure in name resolution" in errors[0]
    assert "`harness weights prefetch i3d_kinetics400 --from DIR`" in errors[0]
    assert not cache.exists() or list(cache.rglob("*")) == []


def test_a_download_that_breaks_off_leaves_no_partial_file_or_empty_folders(cache, monkeypatch):
    class Broken(io.RawIOBase):
        def __init__(self):
            self.sent = False

        def readinto(self, buf):
            if self.sent:
                raise ConnectionResetError(104, "Connection reset by peer")
            self.sent = True
            buf[:4] = b"PK\x03\x04"
            return 4

    cache.mkdir()
    (cache / "weights.lock.json").write_text("{}")  # what was there before stays
    monkeypatch.setattr(urllib.request, "urlopen", lambda *_a, **_k: Broken())
    res = _invoke_prefetch("dreamsim_ensemble_lora")  # dreamsim/ensemble_lora/adapter_model.safetensors
    assert res.exit_code == 2
    assert "the download of dreamsim/ensemble_lora/adapter_model.safetensors from github.com broke off" in res.output
    assert "ConnectionResetError" in res.output and "--from DIR" in res.output
    assert sorted(p.name for p in cache.rglob("*")) == ["weights.lock.json"]
