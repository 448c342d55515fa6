"""The tiny byte-level BPE tokenizer of the offline backbones."""

from __future__ import annotations

import time

import pytest
from transformers import AutoTokenizer

from rewarddance.models import single_token_id, train_tiny_tokenizer
from rewarddance.models.tokenizer import COLOURS, SHAPES

SPECIAL = {"pad_token": "<|endoftext|>", "eos_token": "<|im_end|>"}


def test_words_of_the_shapes_world_are_single_tokens(tmp_path) -> None:
    start = time.perf_counter()
    tokenizer = train_tiny_tokenizer(special_tokens=SPECIAL, extra_special_tokens={"image_token": "<|image_pad|>"})
    assert time.perf_counter() - start < 2.0  # milliseconds in practice
    for word in ("yes", "no", *SHAPES, *COLOURS[:10]):
        single_token_id(tokenizer, word)
        single_token_id(tokenizer, " " + word)
    assert tokenizer.image_token == "<|image_pad|>"
    assert tokenizer.convert_ids_to_tokens(tokenizer.image_token_id) == "<|image_pad|>"
    assert tokenizer.padding_side == "left"
    # Byte-level: anything encodes and decodes, even text outside the corpus.
    text = "Ünïcode & 12345 zebra"
    assert tokenizer.decode(tokenizer.encode(text, add_special_tokens=False)) == text

    tokenizer.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    assert reloaded.encode(text) == tokenizer.encode(text)
    assert reloaded.image_token_id == tokenizer.image_token_id and reloaded.padding_side == "left"


def test_multi_token_yes_is_a_clear_error() -> None:
    tokenizer = train_tiny_tokenizer(special_tokens=SPECIAL, corpus=["hello world"] * 10)
    with pytest.raises(ValueError, match=r"Tokenizer 'my-rm' .* encodes 'yes' as \d+ tokens"):
        single_token_id(tokenizer, "yes", source="my-rm")


def test_pad_and_eos_are_required() -> None:
    with pytest.raises(ValueError, match="pad_token and eos_token"):
        train_tiny_tokenizer(special_tokens={"eos_token": "</s>"})
