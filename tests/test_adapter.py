import pytest
import torch

from harness.models.tiny_wan import TinyModelConfig, TinyWanAdapter


@pytest.fixture()
def adapter():
    torch.manual_seed(0)
    return TinyWanAdapter(TinyModelConfig(num_layers=2), num_frames=4, resolution=8)


def _inputs(adapter, b=2):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(adapter.latent_shape(b), generator=g)
    cond = adapter.encode_condition(torch.rand(b, 3, 8, 8, generator=g) * 2 - 1, ["red circle moves left fast", ""][:b])
    return x, torch.tensor([0.2, 0.9])[:b], cond


def test_shapes_and_conventions(adapter):
    x, sigma, cond = _inputs(adapter)
    assert adapter.predict(x, sigma, cond).shape == x.shape == (2, 3, 4, 8, 8)
    assert cond.text.shape == (2, 32, 32) and torch.all(cond.text[1] == 0)  # empty caption -> zeros
    x0, eps = torch.randn_like(x), torch.randn_like(x)
    xt = adapter.add_noise(x0, eps, sigma)
    assert torch.allclose(xt[0], 0.8 * x0[0] + 0.2 * eps[0])
    assert torch.equal(adapter.training_target(x0, eps, sigma), eps - x0)
    assert torch.equal(adapter.encode_video(x0), x0) and torch.equal(adapter.decode_latents(x0), x0)


def test_condition_changes_the_output(adapter):
    x, sigma, cond = _inputs(adapter)
    other = adapter.encode_condition(cond.first_frame, ["blue square stays still", ""])
    assert not torch.allclose(adapter.predict(x, sigma, cond)[0], adapter.predict(x, sigma, other)[0])
    flipped = adapter.encode_condition(-cond.first_frame, list(cond.captions))
    assert not torch.allclose(adapter.predict(x, sigma, cond), adapter.predict(x, sigma, flipped))


def test_lora_trains_only_adapters_and_reference_gives_base(adapter):
    x, sigma, cond = _inputs(adapter)
    with torch.no_grad():
        base = adapter.predict(x, sigma, cond)
    adapter.add_lora(rank=4, alpha=4)
    names = [n for n, p in adapter.model.named_parameters() if p.requires_grad]
    assert names and all("lora_" in n for n in names)
    assert {n.split(".")[-4] for n in names} == {"to_q", "to_k", "to_v", "0"}  # ...to_out.0.lora_A.default.weight
    with torch.no_grad():
        assert torch.equal(adapter.predict(x, sigma, cond), base)  # LoRA B starts at zero
    loss = adapter.predict(x, sigma, cond).pow(2).mean()
    loss.backward()
    frozen = [p for p in adapter.model.parameters() if not p.requires_grad]
    assert all(p.grad is None for p in frozen)
    opt = torch.optim.SGD(adapter.trainable_parameters(), lr=1.0)
    opt.step()
    with torch.no_grad():
        assert not torch.allclose(adapter.predict(x, sigma, cond), base)
        with adapter.reference():
            assert torch.equal(adapter.predict(x, sigma, cond), base)
        assert not torch.allclose(adapter.predict(x, sigma, cond), base)  # adapters back on


def test_reference_without_lora_is_an_error(adapter):
    with pytest.raises(RuntimeError, match="add_lora"):
        with adapter.reference():
            pass


def test_checkpoint_and_lora_round_trip(adapter, tmp_path):
    x, sigma, cond = _inputs(adapter)
    adapter.save(tmp_path / "m")
    loaded = TinyWanAdapter.load(tmp_path / "m")
    with torch.no_grad():
        assert torch.equal(loaded.predict(x, sigma, cond), adapter.predict(x, sigma, cond))
    adapter.add_lora(4, 4)
    with torch.no_grad():
        for p in adapter.trainable_parameters():
            p.add_(0.05)
    loaded.add_lora(4, 4)
    loaded.load_lora_state_dict(adapter.lora_state_dict())
    with torch.no_grad():
        assert torch.equal(loaded.predict(x, sigma, cond), adapter.predict(x, sigma, cond))


def test_lora_exports_in_the_diffusers_format(adapter, tmp_path):
    x, sigma, cond = _inputs(adapter)
    adapter.save(tmp_path / "m")
    adapter.add_lora(4, 2)
    with torch.no_grad():
        for name, p in adapter.model.named_parameters():
            if "lora_B" in name:
                p.normal_()
        tuned = adapter.predict(x, sigma, cond)
    path = adapter.save_lora(tmp_path / "lora")
    fresh = TinyWanAdapter.load(tmp_path / "m")
    with torch.no_grad():
        assert not torch.allclose(fresh.predict(x, sigma, cond), tuned)
    # diffusers' own loader; given the folder (not the file path) it reads alpha from the metadata
    fresh.model.load_lora_adapter(str(path.parent), weight_name=path.name, prefix="transformer")
    assert fresh.model.peft_config["default_0"].lora_alpha == 2
    with torch.no_grad():
        torch.testing.assert_close(fresh.predict(x, sigma, cond), tuned, atol=1e-5, rtol=0)


def test_missing_checkpoint_file_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"adapter.json.*harness build base"):
        TinyWanAdapter.load(tmp_path)
