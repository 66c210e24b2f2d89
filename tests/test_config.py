import pytest

from harness.config import ConfigError, available_presets, load_preset, parse_override


def test_tiny_preset_loads():
    assert "tiny" in available_presets()
    cfg = load_preset("tiny")
    assert cfg.world.resolution == 16 and cfg.sampler.kind == "ode"
    assert cfg.base_checkpoint_path().name == "base"


def test_unknown_preset_lists_allowed():
    with pytest.raises(ConfigError, match="unknown preset 'huge'; allowed: svd-davis, tiny, wan21-1.3b-fewstep"):
        load_preset("huge")


def test_bad_value_names_field_and_allowed_values():
    with pytest.raises(ConfigError, match=r"field 'sampler.kind': Input should be 'ode' or 'sde'"):
        load_preset("tiny", [parse_override("sampler.kind=heun")])


def test_unknown_field_lists_allowed_fields():
    with pytest.raises(ConfigError, match=r"field 'pretrain.stepz': unknown field; allowed fields here: steps"):
        load_preset("tiny", [parse_override("pretrain.stepz=3")])


def test_malformed_yaml(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nworld: {resolution: [16\n")
    with pytest.raises(ConfigError, match="malformed YAML in .*bad.yaml"):
        load_preset(str(bad))
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match="does not exist"):
        load_preset(str(missing))


def test_override_parsing():
    assert parse_override("a.b=3") == {"a": {"b": 3}}
    assert parse_override("sampler.timesteps=[1000, 757, 522]") == {"sampler": {"timesteps": [1000, 757, 522]}}
    with pytest.raises(ConfigError):
        parse_override("no-equals")
