"""The VLM ranker: answer parsing, local-only loading, and the generate path on a tiny random VLM.

The tiny model is a LLaVA (CLIP vision tower + Llama text model): Qwen2/2.5/3-VL processors carry a
video processor, which transformers cannot construct without torchvision (absent on the CPU install),
so ``AutoProcessor`` cannot load them here; LLaVA's processor has no video processor and its image
processor has a PIL backend.
"""

import numpy as np
import pytest
import torch

from trainers.rankers import _VLM_OPTIONS, VLMRanker

TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: "
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}<image>{% else %} {{ c['text'] }} {% endif %}"
    "{% endfor %}{% endif %}</s>\n{% endfor %}{% if add_generation_prompt %}assistant: {% endif %}"
)


@pytest.mark.parametrize("prompt", ["human", "non_human"])
def test_parse_label_reads_the_four_options(prompt):
    for label, option in enumerate(_VLM_OPTIONS[prompt], 1):
        assert VLMRanker.parse_label(option) == label
        assert VLMRanker.parse_label(f"  Answer:\n {option.upper()}  ") == label
        assert VLMRanker.parse_label("  ".join(option.split()).replace(" ", "\n ", 1)) == label
        assert VLMRanker.parse_label(option.rstrip(".") + " because ...") == label


def test_parse_label_bare_numbers_and_garbage():
    for text, label in [("1", 1), ("2.", 2), (" 3)", 3), ("4. Both videos look alike", 4), ("2\n", 2)]:
        assert VLMRanker.parse_label(text) == label
    for text in ["", "5", "0.", "1.5 seconds", "2 videos", "Video 3 has a lower degree of visual distortion.",
                 "I cannot tell.", "Both videos have similar degrees of distortion."]:
        assert VLMRanker.parse_label(text) is None


def test_missing_model_dir(tmp_path):
    missing = tmp_path / "no-such-vlm"
    with pytest.raises(FileNotFoundError, match="no-such-vlm.*must be placed there"):
        VLMRanker(missing)


def _save_tiny_llava(path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import (
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaImageProcessorPil,
        LlavaProcessor,
        PreTrainedTokenizerFast,
    )

    words = ["<pad>", "<s>", "</s>", "<unk>", "<image>", "user", "assistant", ":", ".", "Video", "1", "2", "3", "4",
             "has", "a", "lower", "degree", "of", "visual", "distortion", "Both", "videos", "similar"]
    vocab = {w: i for i, w in enumerate(words)}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.decoder = decoders.WordPiece(prefix="##")
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<pad>",
        extra_special_tokens={"image_token": "<image>"}, chat_template=TEMPLATE,
    )
    image_processor = LlavaImageProcessorPil(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28})
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=14,
                               vision_feature_select_strategy="default", num_additional_image_tokens=1,
                               chat_template=TEMPLATE)
    config = LlavaConfig(
        vision_config=dict(model_type="clip_vision_model", hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                           num_attention_heads=2, image_size=28, patch_size=14, projection_dim=16),
        text_config=dict(model_type="llama", vocab_size=len(vocab), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                         max_position_embeddings=1024, bos_token_id=1, eos_token_id=2, pad_token_id=0),
        image_token_index=vocab["<image>"], image_seq_length=4, vision_feature_select_strategy="default",
        vision_feature_layer=-1,
    )
    torch.manual_seed(0)
    LlavaForConditionalGeneration(config).save_pretrained(path)
    processor.save_pretrained(path)  # processor config, tokenizer and chat template


@pytest.fixture(scope="module")
def tiny_ranker(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-vlm")
    _save_tiny_llava(path)
    return VLMRanker(path, max_new_tokens=6)


def test_prefer_runs_a_tiny_vlm(tiny_ranker):
    rng = np.random.default_rng(0)
    a, b = (rng.integers(0, 256, (8, 16, 16, 3), dtype=np.uint8) for _ in range(2))
    pref = tiny_ranker.prefer(a, b, None)
    assert pref in (-1, 0, 1)
    assert isinstance(tiny_ranker.last_output, str)
    assert tiny_ranker.last_label in (None, 1, 2, 3, 4)
    assert tiny_ranker.unparsed == (tiny_ranker.last_label is None)
    # fewer frames than num_frames, and an odd size, also go through
    assert tiny_ranker.prefer(a[:3], rng.integers(0, 256, (5, 20, 12, 3), dtype=np.uint8), None) in (-1, 0, 1)
    with pytest.raises(ValueError, match="uint8"):
        tiny_ranker.prefer(a.astype(np.float32), b, None)


def test_instruction_lists_the_options_verbatim(tiny_ranker):
    text = tiny_ranker.instruction()
    for option in _VLM_OPTIONS["non_human"]:
        assert option in text


def test_prefer_maps_labels(tiny_ranker, monkeypatch):
    frames = np.zeros((2, 16, 16, 3), np.uint8)
    unparsed = tiny_ranker.unparsed
    for answer, pref in [("1", 1), ("2", -1), ("3.", 1), ("4)", -1), ("no idea", 0),
                         (_VLM_OPTIONS["non_human"][3], -1)]:
        monkeypatch.setattr(tiny_ranker, "_generate", lambda a, b, answer=answer: answer)
        assert tiny_ranker.prefer(frames, frames, None) == pref
        assert tiny_ranker.last_output == answer
    assert tiny_ranker.last_label == 4 and tiny_ranker.unparsed == unparsed + 1


def _save_processor_needing_torchvision(path):
    """A Qwen2-VL processor directory (tokenizer and processor configs, no weights): its video processor
    is what transformers cannot build without torchvision."""
    import json

    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel(vocab={"<unk>": 0, "a": 1}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>").save_pretrained(path)
    (path / "config.json").write_text(json.dumps({"model_type": "qwen2_vl"}))
    (path / "preprocessor_config.json").write_text(json.dumps(
        {"processor_class": "Qwen2VLProcessor", "image_processor_type": "Qwen2VLImageProcessor"}))
    (path / "video_preprocessor_config.json").write_text(json.dumps(
        {"processor_class": "Qwen2VLProcessor", "video_processor_type": "Qwen2VLVideoProcessor"}))


def test_missing_torchvision_names_the_full_extra(tmp_path, monkeypatch):
    import sys

    from harness.extras import MissingExtraError

    monkeypatch.setitem(sys.modules, "torchvision", None)  # as on the CPU install
    _save_processor_needing_torchvision(tmp_path)
    with pytest.raises(MissingExtraError) as err:
        VLMRanker(tmp_path)
    message = str(err.value)
    assert "\n" not in message
    assert "needs torchvision" in message and "'full' extra" in message and ".[full]" in message
