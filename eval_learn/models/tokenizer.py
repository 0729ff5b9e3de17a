"""A small CLIP-compatible BPE vocabulary, built from a word list.

Stable Diffusion's tokenizer is CLIP's byte-level BPE with 49,408 entries; its embedding table alone would be larger
than the offline models. The same algorithm with a tiny vocabulary (every byte, every byte ending a word, and merges
that make the listed words single tokens) loads as ``transformers.CLIPTokenizer`` and runs through the unchanged
diffusers pipeline, so the offline models exercise the exact code path real models use. Unknown words still encode:
they fall back to byte pieces.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from transformers import CLIPTokenizer

BOS, EOS = "<|startoftext|>", "<|endoftext|>"


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible map from bytes to printable characters (the BPE alphabet)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAC + 1)) + list(range(0xAE, 0xFF + 1))
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, chars), strict=True))


def _bpe(word: tuple[str, ...], ranks: dict[tuple[str, str], int]) -> tuple[str, ...]:
    """Apply merges lowest-rank first, as CLIP's tokenizer does."""
    while len(word) > 1:
        pairs = [(ranks.get(p, 1 << 30), i) for i, p in enumerate(zip(word, word[1:], strict=False))]
        rank, i = min(pairs)
        if rank == 1 << 30:
            break
        word = word[:i] + (word[i] + word[i + 1],) + word[i + 2 :]
    return word


def build_vocab(words: Iterable[str]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Return (vocab, merges) in which every given lower-case ASCII word is one token."""
    byte_chars = list(bytes_to_unicode().values())
    symbols = byte_chars + [c + "</w>" for c in byte_chars]
    merges: list[tuple[str, str]] = []
    ranks: dict[tuple[str, str], int] = {}
    for word in sorted(set(words)):
        pieces = (*word[:-1], word[-1] + "</w>")
        while len(pieces := _bpe(pieces, ranks)) > 1:
            pair = (pieces[0], pieces[1])
            ranks[pair] = len(merges)
            merges.append(pair)
    for a, b in merges:
        if a + b not in symbols:
            symbols.append(a + b)
    symbols += [BOS, EOS]
    return {s: i for i, s in enumerate(symbols)}, merges


def write_tokenizer(words: Iterable[str], out_dir: str | Path, model_max_length: int) -> Path:
    """Write vocab.json, merges.txt and tokenizer_config.json that ``CLIPTokenizer.from_pretrained`` reads."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    vocab, merges = build_vocab(words)
    (out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    lines = ["#version: 0.2"] + [f"{a} {b}" for a, b in merges]
    (out / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": model_max_length,
        "bos_token": BOS,
        "eos_token": EOS,
        "unk_token": EOS,
        "pad_token": EOS,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=1), encoding="utf-8")
    return out


def load_tokenizer(path: str | Path) -> CLIPTokenizer:
    return CLIPTokenizer.from_pretrained(str(path))
