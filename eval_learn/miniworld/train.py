"""Train the MiniWorld pipeline and judge from a seed, on a CPU, with one thread.

    python -m eval_learn.miniworld.train --out eval_learn/assets/miniworld

Order: tokenizer (a CLIP BPE over the world's words) → VAE (32×32 → 4×8×8) → text encoder + UNet jointly (DDPM
ε-prediction, 10 % caption dropout for classifier-free guidance, EMA weights saved) → judge (on renders and VAE
reconstructions) → a prompt-following check with the judge. Everything is procedurally generated from ``--seed``.
The result is a diffusers ``StableDiffusionPipeline`` folder plus ``judge/`` and ``training_report.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from diffusers.training_utils import EMAModel
from tqdm.auto import tqdm
from transformers import CLIPTextConfig, CLIPTextModel

from eval_learn.miniworld.judge import HEADS, JudgeNet, save_judge, to_tensor
from eval_learn.miniworld.world import COLOURS, SHAPES, WORDS, Scene, prompt, prompt_for, random_scene, render
from eval_learn.models.tokenizer import load_tokenizer, write_tokenizer

log = logging.getLogger(__name__)
MAX_LENGTH = 16
BETAS = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "num_train_timesteps": 1000}


def make_data(n: int, rng: np.random.Generator) -> tuple[np.ndarray, list[Scene]]:
    scenes = [random_scene(rng) for _ in range(n)]
    return np.stack([render(s, rng) for s in scenes]), scenes


def build_vae() -> AutoencoderKL:
    return AutoencoderKL(
        in_channels=3, out_channels=3, block_out_channels=(32, 64, 64), layers_per_block=1, latent_channels=4,
        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
        norm_num_groups=16, sample_size=32,
    )  # fmt: skip


def build_unet() -> UNet2DConditionModel:
    return UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=64, attention_head_dim=8, norm_num_groups=8,
    )  # fmt: skip


def build_text_encoder(tokenizer) -> CLIPTextModel:
    return CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=MAX_LENGTH, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    ))  # fmt: skip


def lr_at(step: int, total: int, peak: float, warmup: int = 50) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * (0.3 + 0.7 * 0.5 * (1 + np.cos(np.pi * (step - warmup) / max(1, total - warmup))))


def train_vae(images: torch.Tensor, steps: int, batch: int, gen: torch.Generator) -> tuple[AutoencoderKL, float]:
    vae = build_vae()
    opt = torch.optim.AdamW(vae.parameters(), lr=1e-3)
    for step in (bar := tqdm(range(steps), desc="VAE")):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, steps, 1e-3)
        x = images[torch.randint(len(images), (batch,), generator=gen)]
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.sample(generator=gen)).sample
        loss = F.mse_loss(recon, x) + 1e-4 * posterior.kl().mean() / x[0].numel()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        bar.set_postfix(loss=f"{loss.item():.4f}")
    vae.eval()
    with torch.no_grad():
        held = images[:512]
        mse = F.mse_loss(vae.decode(vae.encode(held).latent_dist.mode()).sample, held).item()
    return vae, mse


@torch.no_grad()
def encode_all(vae: AutoencoderKL, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    means, stds = [], []
    for i in range(0, len(images), 256):
        dist = vae.encode(images[i : i + 256]).latent_dist
        means.append(dist.mean)
        stds.append(dist.std)
    return torch.cat(means), torch.cat(stds)


def train_denoiser(tokenizer, means, stds, scenes, steps, scaling, rng, gen):
    text_encoder, unet = build_text_encoder(tokenizer), build_unet()
    params = list(unet.parameters()) + list(text_encoder.parameters())
    ema = EMAModel(params, decay=0.995)
    opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=1e-2)
    noise_scheduler = DDPMScheduler(**BETAS)
    unet.train()
    text_encoder.train()
    losses = []
    for step in (bar := tqdm(range(steps), desc="UNet + text encoder")):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, steps, 1e-3)
        idx = torch.randint(len(means), (64,), generator=gen)
        latents = (means[idx] + stds[idx] * torch.randn(means[idx].shape, generator=gen)) * scaling
        captions = ["" if rng.random() < 0.1 else prompt_for(scenes[int(i)], rng) for i in idx]
        ids = tokenizer(
            captions, padding="max_length", max_length=MAX_LENGTH, truncation=True, return_tensors="pt"
        ).input_ids
        noise = torch.randn(latents.shape, generator=gen)
        t = torch.randint(0, 1000, (64,), generator=gen)
        noisy = noise_scheduler.add_noise(latents, noise, t)
        pred = unet(noisy, t, encoder_hidden_states=text_encoder(ids)[0]).sample
        loss = F.mse_loss(pred, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        ema.step(params)
        losses.append(loss.item())
        if step % 50 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}")
    ema.copy_to(params)
    return text_encoder.eval(), unet.eval(), float(np.mean(losses[-100:]))


def train_judge(images: np.ndarray, scenes: list[Scene], recon: np.ndarray, steps: int, gen: torch.Generator):
    net = JudgeNet()
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    x_all = torch.cat([to_tensor(images), to_tensor(recon)])
    labels = torch.tensor([s.label() for s in scenes] * 2)
    for step in tqdm(range(steps), desc="judge"):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, steps, 2e-3)
        idx = torch.randint(len(x_all), (128,), generator=gen)
        logits = net(x_all[idx])
        loss = sum(F.cross_entropy(logits[k], labels[idx, j]) for j, k in enumerate(HEADS))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return net.eval()


@torch.no_grad()
def judge_accuracy(net: JudgeNet, images: np.ndarray, scenes: list[Scene]) -> dict[str, float]:
    logits = net(to_tensor(images))
    labels = torch.tensor([s.label() for s in scenes])
    return {k: float((logits[k].argmax(-1) == labels[:, j]).float().mean()) for j, k in enumerate(HEADS)}


@torch.no_grad()
def prompt_following(pipe, net: JudgeNet, per_prompt: int) -> dict:
    """Judge hit rates for every colour+shape prompt (and each background) over fixed seeds."""
    hits: dict[str, list[float]] = {"colour": [], "shape": [], "background": []}
    per_prompt_hits: dict[str, dict[str, float]] = {}
    cases = [(c, s, None) for c in COLOURS for s in SHAPES] + [("red", "circle", b) for b in HEADS["background"]]
    for colour, shape, background in tqdm(cases, desc="prompt following"):
        text = prompt(colour, shape, background)
        gens = [torch.Generator().manual_seed(10_000 + k) for k in range(per_prompt)]
        images = pipe(
            [text] * per_prompt, generator=gens, num_inference_steps=20, guidance_scale=5.0, output_type="np"
        ).images
        logits = net(torch.from_numpy(images).permute(0, 3, 1, 2) * 2 - 1)
        hits["colour"].append(float((logits["colour"].argmax(-1) == list(COLOURS).index(colour)).float().mean()))
        hits["shape"].append(float((logits["shape"].argmax(-1) == SHAPES.index(shape)).float().mean()))
        per_prompt_hits[text] = {"colour": hits["colour"][-1], "shape": hits["shape"][-1]}
        if background:
            idx = HEADS["background"].index(background)
            hits["background"].append(float((logits["background"].argmax(-1) == idx).float().mean()))
    summary = {k: float(np.mean(v)) for k, v in hits.items()}
    worst = {"worst_colour_hit": float(min(hits["colour"])), "worst_shape_hit": float(min(hits["shape"]))}
    return summary | worst | {"per_prompt": per_prompt_hits}


def judge_stage(vae: AutoencoderKL, raw: np.ndarray, scenes: list[Scene], args: argparse.Namespace) -> tuple:
    """Train and test the judge. It has its own random stream, so ``--judge-only`` reproduces a full run's judge."""
    gen = torch.Generator().manual_seed(args.seed + 2)
    torch.manual_seed(args.seed + 2)  # the judge's initial weights too
    n = min(4096, len(raw))
    judge = train_judge(raw[:n], scenes[:n], reconstruct(vae, raw[:n]), args.judge_steps, gen)
    held_raw, held_scenes = make_data(args.holdout, np.random.default_rng(args.seed + 1))
    accuracy = {
        "renders": judge_accuracy(judge, held_raw, held_scenes),
        "vae_reconstructions": judge_accuracy(judge, reconstruct(vae, held_raw), held_scenes),
    }
    return judge, accuracy


@torch.no_grad()
def reconstruct(vae: AutoencoderKL, raw: np.ndarray) -> np.ndarray:
    """What the VAE makes of each image (uint8): the kind of image a pipeline outputs."""
    out = []
    for i in range(0, len(raw), 256):
        x = to_tensor(raw[i : i + 256])
        y = vae.decode(vae.encode(x).latent_dist.mode()).sample.clamp(-1, 1)
        out.append(((y + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy())
    return np.concatenate(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--images", type=int, default=20_000)
    parser.add_argument("--vae-steps", type=int, default=400)
    parser.add_argument("--vae-batch", type=int, default=32)
    parser.add_argument("--unet-steps", type=int, default=2800)
    parser.add_argument("--judge-steps", type=int, default=700)
    parser.add_argument("--holdout", type=int, default=2000, help="held-out images for the judge accuracy")
    parser.add_argument("--eval-per-prompt", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--judge-only", action="store_true",
                        help="keep the pipeline in --out, retrain and re-evaluate only the judge")  # fmt: skip
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng, gen = np.random.default_rng(args.seed), torch.Generator().manual_seed(args.seed)
    out = args.out
    start = time.perf_counter()
    raw, scenes = make_data(args.images, rng)
    if args.judge_only:
        report = json.loads((out / "training_report.json").read_text())
        times = {k: float(v) for k, v in report["seconds"].items()}
        pipe = StableDiffusionPipeline.from_pretrained(str(out), local_files_only=True)
    else:
        report, times = {}, {"data_s": time.perf_counter() - start}
        if out.exists():
            shutil.rmtree(out)
        tokenizer = load_tokenizer(write_tokenizer(WORDS, out / "tokenizer", MAX_LENGTH))
        images = to_tensor(raw)
        t0 = time.perf_counter()
        vae, recon_mse = train_vae(images, args.vae_steps, args.vae_batch, gen)
        means, stds = encode_all(vae, images)
        scaling = float(1.0 / means.std())
        vae.register_to_config(scaling_factor=scaling)
        times["vae_s"] = time.perf_counter() - t0
        log.info("VAE: reconstruction MSE %.4f, scaling factor %.3f", recon_mse, scaling)
        t0 = time.perf_counter()
        text_encoder, unet, final_loss = train_denoiser(tokenizer, means, stds, scenes, args.unet_steps, scaling,
                                                        rng, gen)  # fmt: skip
        times["unet_text_encoder_s"] = time.perf_counter() - t0
        scheduler = DDIMScheduler(**BETAS, clip_sample=False, set_alpha_to_one=False, steps_offset=1)
        pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                       scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                       requires_safety_checker=False)  # fmt: skip
        pipe.save_pretrained(out, safe_serialization=True)
        write_tokenizer(WORDS, out / "tokenizer", MAX_LENGTH)  # CLIP vocab/merges files, loadable by CLIPTokenizer
        report.update(
            seed=args.seed, vae_reconstruction_mse=recon_mse, latent_scaling_factor=scaling,
            final_denoising_loss=final_loss,
            parameters={"unet": sum(p.numel() for p in unet.parameters()),
                        "vae": sum(p.numel() for p in vae.parameters()),
                        "text_encoder": sum(p.numel() for p in text_encoder.parameters())},
        )  # fmt: skip
    pipe.set_progress_bar_config(disable=True)
    t0 = time.perf_counter()
    judge, accuracy = judge_stage(pipe.vae, raw, scenes, args)
    save_judge(judge, out / "judge", {"trained_on": "renders + VAE reconstructions", "accuracy": accuracy})
    times["judge_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    following = prompt_following(pipe, judge, args.eval_per_prompt)
    times["evaluation_s"] = time.perf_counter() - t0
    times["total_s"] = sum(v for k, v in times.items() if k != "total_s")
    report.update(
        args={k: str(v) for k, v in vars(args).items()}, judge_accuracy=accuracy, prompt_following=following,
        seconds={k: round(v, 1) for k, v in times.items()}, torch_threads=args.threads,
    )  # fmt: skip
    (out / "training_report.json").write_text(json.dumps(report, indent=1))
    log.info("MiniWorld trained: %s", json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
