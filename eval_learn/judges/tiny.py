"""Offline stand-ins for the judges whose real weights cannot be had offline (CLIP, the FID Inception network, the
ImageNet classifier).

They go through the real code paths: :func:`write_tiny_clip` saves a randomly initialised ``CLIPModel`` with a CLIP
BPE tokenizer and a CLIP image processor to a folder, which the ``clip`` judge loads with ``from_pretrained`` exactly
as it loads ``openai/clip-vit-large-patch14``; :func:`tiny_feature_network` is a small fixed network that the ``fid``
metric takes as its ``feature_extractor`` (``eval_learn.judges.tiny:tiny_feature_network``) in place of
Inception; :func:`tiny_classifier` is a random ``ResNetForImageClassification`` over the Imagenette labels with its
image processor, what the ``classifier`` judge runs for ``model: tiny`` (the retention judge of ``err`` on
``model=tiny``); :func:`write_tiny_vlm` (a LLaVA), :func:`write_tiny_blip_vqa` (a BLIP VQA) and
:func:`write_tiny_sbert` (a BERT sentence encoder) are what the ``vlm`` and ``vqa`` judges load in place of
llava-hf/llava-1.5-7b-hf, Salesforce/blip-vqa-capfilt-large and sentence-transformers/all-mpnet-base-v2. All are
deterministic (fixed seeds). Their numbers mean nothing about images.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from eval_learn.models.tiny import WORDS
from eval_learn.models.tokenizer import load_tokenizer, write_tokenizer

CONTEXT = 77  # OpenAI CLIP's text context


def _save_seeded(model_cls: Any, config: Any, seed: int, out: Path) -> None:
    """``model_cls(config)`` initialised under ``seed`` (the global RNG left as it was), saved to ``out``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_cls(config)
    model.save_pretrained(out)


def _clip_image_processor(image_size: int) -> Any:
    from eval_learn.judges.clip import image_processor_class

    return image_processor_class()(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    )


def write_tiny_clip(folder: str | Path, seed: int = 0, image_size: int = 32) -> Path:
    """A random ``CLIPModel`` (two small transformers, projection to 16 dims) with tokenizer and image processor."""
    from transformers import CLIPConfig, CLIPModel

    out = Path(folder)
    write_tokenizer(WORDS, out, CONTEXT)
    tokenizer = load_tokenizer(out)
    config = CLIPConfig(
        text_config={"vocab_size": len(tokenizer), "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                     "num_attention_heads": 4, "max_position_embeddings": CONTEXT, "bos_token_id": tokenizer.bos_token_id,
                     "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id},
        vision_config={"image_size": image_size, "patch_size": 8, "hidden_size": 32, "intermediate_size": 64,
                       "num_hidden_layers": 2, "num_attention_heads": 4},
        projection_dim=16,
    )  # fmt: skip
    _save_seeded(CLIPModel, config, seed, out)
    _clip_image_processor(image_size).save_pretrained(out)
    return out


class TinyFeatures(nn.Module):
    """uint8 images (N, 3, H, W) → 8 features: 4×4 average colours through a fixed random linear map."""

    num_features = 8

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.register_buffer("weight", torch.randn(48, self.num_features, generator=generator))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        pooled = nn.functional.adaptive_avg_pool2d(images.float() / 255.0, 4).flatten(1)
        return pooled @ self.weight


def tiny_feature_network() -> nn.Module:
    return TinyFeatures().eval()


# The ten Imagenette classes under their ImageNet label names (the object protocol's classes and six others).
IMAGENETTE_LABELS = (
    "tench, Tinca tinca",
    "English springer, English springer spaniel",
    "cassette player",
    "chain saw, chainsaw",
    "church, church building",
    "French horn, horn",
    "garbage truck, dustcart",
    "gas pump, gasoline pump, petrol pump, island dispenser",
    "golf ball",
    "parachute, chute",
)


def tiny_classifier(seed: int = 0) -> tuple[nn.Module, object]:
    """A random small ResNet classifier over the Imagenette labels, and its image processor (32 px, no crop)."""
    from transformers import ConvNextImageProcessor, ResNetConfig, ResNetForImageClassification

    labels = dict(enumerate(IMAGENETTE_LABELS))
    config = ResNetConfig(num_channels=3, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], id2label=labels,
                          label2id={v: k for k, v in labels.items()})  # fmt: skip
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = ResNetForImageClassification(config)
    return model.eval(), ConvNextImageProcessor(size={"shortest_edge": 32}, crop_pct=1.0)


# Words the tiny vision-language and VQA models' vocabularies hold (questions, answers and the tests' concepts).
VLM_WORDS = ("does", "this", "image", "show", "answer", "yes", "or", "no", "Yes", "No", "a", "an", "the", "of", "is",
             "what", "color", "how", "many", "there", "in", "on", "USER", "ASSISTANT", ":", "?", ".", ",", "red",
             "blue", "green", "dog", "cat", "car", "church", "nudity", "photo", "two", "three", "one", "black",
             "white", "Question", "Answer")  # fmt: skip


def _word_tokenizer(special: dict[str, str], words: tuple[str, ...], **fast_kwargs: Any) -> Any:
    """A whitespace/punctuation word-level fast tokenizer over ``words`` (one token per word) with ``special``
    tokens first: what the tiny models need, built offline without any downloaded vocabulary."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate([*special.values(), *dict.fromkeys(words)])}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token=special["unk_token"]))
    backend.add_special_tokens([t for t in vocab if t.startswith("<") and t.endswith(">")])  # matched whole
    backend.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(),
                                                     pre_tokenizers.Punctuation("isolated")])  # fmt: skip
    return PreTrainedTokenizerFast(tokenizer_object=backend, **special, **fast_kwargs)


def _bert_style_tokenizer(special: dict[str, str]) -> Any:
    """The word-level tokenizer with BERT's ``[CLS] ... [SEP]`` framing (BLIP's text side, SBERT)."""
    from tokenizers import processors

    tokenizer = _word_tokenizer(special, VLM_WORDS)
    cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]", special_tokens=[("[CLS]", cls), ("[SEP]", sep)]
    )
    return tokenizer


# A LLaVA-1.5-style chat template: "USER: <image>\n<question> ASSISTANT:".
TINY_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'user' %}USER: {% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<image>\n{% else %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %} ASSISTANT:{% endif %}"
)


def write_tiny_vlm(folder: str | Path, seed: int = 0, image_size: int = 32) -> Path:
    """A random ``LlavaForConditionalGeneration`` (a tiny CLIP vision tower, a two-layer Llama) with its processor
    (word-level tokenizer, CLIP image processor, a LLaVA-1.5-style chat template), saved to ``folder``."""
    from transformers import LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

    out = Path(folder)
    special = {"unk_token": "<unk>", "bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>"}
    tokenizer = _word_tokenizer(special, ("<image>", *VLM_WORDS), extra_special_tokens={"image_token": "<image>"})
    patch = 8
    config = LlavaConfig(
        vision_config={"model_type": "clip_vision_model", "image_size": image_size, "patch_size": patch,
                       "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4},
        text_config={"model_type": "llama", "vocab_size": len(tokenizer), "hidden_size": 32, "intermediate_size": 64,
                     "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 4,
                     "max_position_embeddings": 256, "pad_token_id": tokenizer.pad_token_id,
                     "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id},
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"), image_seq_length=(image_size // patch) ** 2,
    )  # fmt: skip
    _save_seeded(LlavaForConditionalGeneration, config, seed, out)
    processor = LlavaProcessor(image_processor=_clip_image_processor(image_size), tokenizer=tokenizer, patch_size=patch,
                               vision_feature_select_strategy="default", num_additional_image_tokens=1,
                               chat_template=TINY_CHAT_TEMPLATE)  # fmt: skip
    processor.save_pretrained(out)
    return out


def write_tiny_blip_vqa(folder: str | Path, seed: int = 0, image_size: int = 32) -> Path:
    """A random ``BlipForQuestionAnswering`` (tiny ViT, two-layer BERT encoder and decoder) with a ``BlipProcessor``
    (word-level BERT-style tokenizer, BLIP image processor), saved to ``folder``: TIFA's VQA path offline."""
    from transformers import BlipConfig, BlipForQuestionAnswering, BlipImageProcessorPil, BlipProcessor

    out = Path(folder)
    special = {"unk_token": "[UNK]", "pad_token": "[PAD]", "cls_token": "[CLS]", "sep_token": "[SEP]",
               "bos_token": "[DEC]", "mask_token": "[MASK]"}  # fmt: skip
    tokenizer = _bert_style_tokenizer(special)
    sep = tokenizer.sep_token_id
    text = {"vocab_size": len(tokenizer), "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
            "num_attention_heads": 4, "encoder_hidden_size": 32, "max_position_embeddings": 64,
            "bos_token_id": tokenizer.bos_token_id, "pad_token_id": tokenizer.pad_token_id,
            "sep_token_id": sep, "eos_token_id": sep}  # fmt: skip
    vision = {"image_size": image_size, "patch_size": 8, "hidden_size": 32, "intermediate_size": 64,
              "num_hidden_layers": 2, "num_attention_heads": 4}  # fmt: skip
    config = BlipConfig(text_config=text, vision_config=vision)
    _save_seeded(BlipForQuestionAnswering, config, seed, out)
    image_processor = BlipImageProcessorPil(size={"height": image_size, "width": image_size})
    BlipProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(out)
    return out


def write_tiny_sbert(folder: str | Path, seed: int = 0) -> Path:
    """A random two-layer ``BertModel`` with a word-level tokenizer, saved to ``folder``: the sentence encoder that
    maps TIFA's free-form answers to choices, offline."""
    from transformers import BertConfig, BertModel

    out = Path(folder)
    special = {"unk_token": "[UNK]", "pad_token": "[PAD]", "cls_token": "[CLS]", "sep_token": "[SEP]"}
    tokenizer = _bert_style_tokenizer(special)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                        num_attention_heads=4, max_position_embeddings=64, pad_token_id=tokenizer.pad_token_id)  # fmt: skip
    _save_seeded(BertModel, config, seed, out)
    tokenizer.save_pretrained(out)
    return out
