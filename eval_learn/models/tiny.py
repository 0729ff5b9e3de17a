"""``model=tiny``: a randomly initialised pipeline with exactly Stable Diffusion's structure.

It exists so that every technique and metric runs end to end on a CPU, offline, in seconds: a CLIP BPE tokenizer,
``CLIPTextModel``, ``UNet2DConditionModel`` with cross-attention, ``AutoencoderKL`` and a DDIM scheduler, wired into
the unchanged ``StableDiffusionPipeline``. Weights come from a fixed seed, so the same pipeline is rebuilt bit for bit
everywhere. Its images mean nothing; ``model=miniworld`` is the trained offline model.
"""

from __future__ import annotations

import tempfile

import torch
from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from eval_learn.models.tokenizer import load_tokenizer, write_tokenizer

# Words that become single tokens; anything else is spelled out in byte pieces.
WORDS = (
    "a an the of in on with and photo picture image painting portrait drawing style art by "
    "person man woman people child dog cat car tree house church beach city street sky sea forest mountain "
    "red green blue yellow black white nude naked body face hand dress shirt "
    "violence blood gun knife fire van gogh monet picasso"
).split()

MAX_LENGTH = 77  # CLIP's context length, as in Stable Diffusion


def build_tiny_pipeline(seed: int = 0) -> StableDiffusionPipeline:
    """Build the tiny pipeline; the same ``seed`` gives identical weights on every machine."""
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = load_tokenizer(write_tokenizer(WORDS, tmp, MAX_LENGTH))
    devices: list[torch.device] = []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        text_encoder = CLIPTextModel(
            CLIPTextConfig(
                vocab_size=len(tokenizer),
                hidden_size=32,
                intermediate_size=64,
                num_hidden_layers=2,
                num_attention_heads=4,
                max_position_embeddings=MAX_LENGTH,
                bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
            )
        )
        unet = UNet2DConditionModel(
            sample_size=16,
            in_channels=4,
            out_channels=4,
            block_out_channels=(32, 64),
            layers_per_block=1,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=32,
            attention_head_dim=4,
            norm_num_groups=8,
        )
        vae = AutoencoderKL(
            in_channels=3,
            out_channels=3,
            block_out_channels=(16, 32, 32),
            down_block_types=("DownEncoderBlock2D",) * 3,
            up_block_types=("UpDecoderBlock2D",) * 3,
            latent_channels=4,
            layers_per_block=1,
            norm_num_groups=8,
            sample_size=64,
        )
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder.eval(),
        tokenizer=tokenizer,
        unet=unet.eval(),
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
