from __future__ import annotations

import torch
from transformers import CLIPTokenizer

from eval_learn.models.tiny import WORDS, build_tiny_pipeline
from eval_learn.models.tokenizer import load_tokenizer, write_tokenizer


def test_tokenizer_loads_as_clip_and_makes_listed_words_single_tokens(tmp_path) -> None:
    tok = load_tokenizer(write_tokenizer(["red", "circle", "photo", "gogh"], tmp_path, 16))
    assert isinstance(tok, CLIPTokenizer)
    pieces = tok.convert_ids_to_tokens(tok("a photo of a red circle").input_ids)
    assert pieces[0] == "<|startoftext|>" and pieces[-1] == "<|endoftext|>"
    assert "photo</w>" in pieces and "red</w>" in pieces and "circle</w>" in pieces
    # An unknown word still encodes, in byte pieces, and decodes back.
    ids = tok("zebra").input_ids
    assert len(ids) > 3
    assert tok.decode(ids, skip_special_tokens=True).strip() == "zebra"


def test_tiny_pipeline_is_deterministic_and_sd_structured() -> None:
    a, b = build_tiny_pipeline(), build_tiny_pipeline()
    for (name, p), (_, q) in zip(a.unet.state_dict().items(), b.unet.state_dict().items(), strict=True):
        assert torch.equal(p, q), name
    assert a.unet.config.cross_attention_dim == a.text_encoder.config.hidden_size
    assert any("attn2" in n for n, _ in a.unet.named_modules())
    assert len(a.tokenizer) < 1000 and all(len(a.tokenizer(w).input_ids) == 3 for w in WORDS)
