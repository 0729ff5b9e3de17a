"""Continuous prompts for a CLIP text encoder: encode given token-embedding rows, and project rows to the vocabulary.

Why a hook and not a hand-written encoder: the text encoder's own forward (positions, causal mask, layers, final
norm) stays the one that renders images, whatever the transformers version, so a learned prompt means the same thing
to the optimiser and to the sampling loop.

Generic on purpose (no attack's logic): the attacks that learn soft tokens (P4D, UnlearnDiffAtk, MMA-Diffusion's
token gradient, concept inversion) and a technique's inner attack in word-embedding space (AdvUnlearn) share it,
so it sits with the models, below both.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F


@contextmanager
def token_embeddings_replaced(text_encoder: Any, rows: torch.Tensor) -> Iterator[None]:
    """Inside the block, the text encoder's token-embedding layer returns ``rows`` ``[batch, tokens, dim]`` instead
    of looking its input ids up (the ids still decide nothing else for Stable Diffusion's last hidden state)."""
    module = text_encoder.get_input_embeddings()
    handle = module.register_forward_hook(lambda _module, _inputs, _output: rows)
    try:
        yield
    finally:
        handle.remove()


def encode_rows(text_encoder: Any, ids: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """The last hidden state ``[batch, tokens, dim]`` of the text encoder for token-embedding ``rows`` (``ids`` of
    the same shape give the sequence length and the pooled position, which Stable Diffusion does not use)."""
    dtype = text_encoder.get_input_embeddings().weight.dtype
    with token_embeddings_replaced(text_encoder, rows.to(dtype)):
        return text_encoder(ids.to(rows.device))[0]


def nearest_tokens(rows: torch.Tensor, vocabulary: torch.Tensor) -> torch.Tensor:
    """The id of the vocabulary row with the highest cosine similarity to each of ``rows`` ``[..., dim]`` (the
    projection of PEZ and P4D: both sides normalised, exact dot-product search)."""
    queries = F.normalize(rows.detach().reshape(-1, rows.shape[-1]).float(), dim=-1)
    corpus = F.normalize(vocabulary.detach().float(), dim=-1)
    return (queries @ corpus.T).argmax(dim=-1).reshape(rows.shape[:-1])
