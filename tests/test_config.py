import pytest

from harness.config import ConfigError, available_presets, load_preset, parse_override


def test_tiny_preset_loads():
    assert "tiny" in available_presets()
    cfg = load_preset("tiny")
    assert cfg.world.resolution == 16 and cfg.sampler.kind == "ode"
    assert cfg.base_checkpoint_path().name == "base"


def test_unknown_preset_lists_allowed():
    allowed = "svd-davis, tiny, tiny-long, wan21-1.3b-fewstep"
    with pytest.raises(ConfigError, match=f"unknown preset 'huge'; allowed: {allowed}"):
        load_preset("huge")


def test_a_preset_extends_another_and_lists_only_what_it_changes(tmp_path):
    tiny, long = load_preset("tiny").model_dump(), load_preset("tiny-long").model_dump()
    assert long["name"] == "tiny-long" and long["world"] == tiny["world"] and long["eval"] == tiny["eval"]
    # mappings merge: tiny-long sets sft's steps and lr; batch size and LoRA come from tiny
    assert (long["methods"]["sft"]["steps"], tiny["methods"]["sft"]["steps"]) == (300, 100)
    assert long["methods"]["sft"]["lora_rank"] == tiny["methods"]["sft"]["lora_rank"] == 8
    assert long["methods"]["shift"]["buffer"] == tiny["methods"]["shift"]["buffer"]
    assert long["methods"]["apo-offline"]["stages"][0]["steps"] == 60
    assert long["probes"]["pairs"] == tiny["probes"]["pairs"]
    # a file extends the file next to it, and overrides still apply on top
    (tmp_path / "mine.yaml").write_text("extends: tiny\nname: mine\nsampler: {num_steps: 4}\n")
    (tmp_path / "mine2.yaml").write_text("extends: mine.yaml\nname: mine2\n")
    mine2 = load_preset(str(tmp_path / "mine2.yaml"), [parse_override("eval.num_videos=40")])
    assert (mine2.name, mine2.sampler.num_steps, mine2.sampler.kind, mine2.eval.num_videos) == ("mine2", 4, "ode", 40)
    (tmp_path / "a.yaml").write_text("extends: b.yaml\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\n")
    with pytest.raises(ConfigError, match="`extends` loops"):
        load_preset(str(tmp_path / "a.yaml"))
    (tmp_path / "c.yaml").write_text("extends: nowhere\n")
    with pytest.raises(ConfigError, match="unknown preset 'nowhere'"):
        load_preset(str(tmp_path / "c.yaml"))


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
