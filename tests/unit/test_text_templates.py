"""Templates: crop offsets measured with the real Llama-3 tokenizer, and the 256-token prompt budget."""

from __future__ import annotations

import logging

import pytest

from hunyuan.text import IMAGE, VIDEO, VIDEO_I2V, crop_start, get_template, image_template, load_llm_tokenizer
from hunyuan.text.encode import EncodeOptions, tokenize_llm
from hunyuan.text.tiny import llama_tokenizer_dir
from tests.conftest import COMFYUI_DIR


@pytest.fixture(scope="module")
def tokenizer():
    return load_llm_tokenizer(llama_tokenizer_dir(COMFYUI_DIR))


def test_reference_crop_offsets(tokenizer):
    # Tencent's reference values: 95 for the video template, 36 for the image template.
    assert crop_start(tokenizer, VIDEO) == 95
    assert crop_start(tokenizer, IMAGE) == 36


def test_crop_offset_marks_first_prompt_token(tokenizer):
    ids = tokenizer(VIDEO.apply("A red fox"))["input_ids"]
    crop = crop_start(tokenizer, VIDEO)
    assert tokenizer.decode(ids[crop:]) == "A red fox<|eot_id|>"
    assert tokenizer.decode(ids[crop - 1:crop]) == "\n\n"


def test_custom_template_offset_is_measured(tokenizer):
    custom = get_template("custom", "<|start_header_id|>user<|end_header_id|>\n\n{}<|eot_id|>")
    # <|begin_of_text|> <|start_header_id|> user <|end_header_id|> \n\n
    assert crop_start(tokenizer, custom) == 5


@pytest.mark.parametrize("text", ["no placeholder", "{} twice {}", ""])
def test_bad_custom_template_is_rejected(text):
    with pytest.raises(ValueError, match="custom"):
        get_template("custom", text)


def test_unknown_template_name():
    with pytest.raises(ValueError, match="template='poster'.*video, image, video_i2v, custom"):
        get_template("poster")


def test_300_token_prompt_keeps_256_and_reports_44(tokenizer, caplog):
    prompt = "cat" + " cat" * 299
    crop = crop_start(tokenizer, VIDEO)
    full = tokenizer(VIDEO.apply(prompt))["input_ids"]
    assert len(full) - crop - 1 == 300  # 300 prompt tokens + <|eot_id|>
    with caplog.at_level(logging.WARNING, logger="hunyuan.text.encode"):
        tokens, got_crop = tokenize_llm(tokenizer, [prompt], EncodeOptions(VIDEO))
    assert got_crop == crop
    assert tokens["input_ids"].shape == (1, crop + 256)
    kept = tokens["input_ids"][0, crop:]
    assert tokens["attention_mask"][0, crop:].sum() == 256
    assert tokenizer.decode(kept) == " ".join(["cat"] * 256)
    assert "44 tokens were dropped" in caplog.text
    assert "300 tokens long" in caplog.text


def test_short_prompt_is_padded_and_not_reported(tokenizer, caplog):
    with caplog.at_level(logging.WARNING, logger="hunyuan.text.encode"):
        tokens, crop = tokenize_llm(tokenizer, ["a cat", "a dog runs fast"], EncodeOptions(IMAGE))
    assert crop == 36
    mask = tokens["attention_mask"][:, crop:]
    assert mask.shape == (2, 256)
    assert mask.sum(1).tolist() == [3, 5]  # prompt tokens + <|eot_id|>
    assert tokens["input_ids"][0, crop + 3:].eq(tokenizer.pad_token_id).all()
    assert "dropped" not in caplog.text


def test_image_template_picks_the_i2v_template():
    """With an image, 'video' becomes Tencent's I2V template; a template without '<image>' is refused by name."""
    assert image_template(VIDEO) is VIDEO_I2V and image_template(VIDEO_I2V) is VIDEO_I2V
    assert VIDEO_I2V.takes_image and not VIDEO.takes_image
    with pytest.raises(ValueError, match="template='image' has no '<image>' before"):
        image_template(IMAGE)
