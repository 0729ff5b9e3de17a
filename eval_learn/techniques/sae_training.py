"""A TopK sparse autoencoder over one UNet block's activations, and the trainer SAeUron uses to fit it.

The autoencoder is the kind SAeUron's release trains (cywinski/SAeUron, ``SAE/sae.py``): a linear encoder whose
input has the decoder bias removed, a ReLU, the k largest latents kept, and a decoder whose rows are kept at unit
norm. Training keeps the k·N largest latents over a batch of N patches (the release's ``batch_topk``), minimises the
fraction of variance unexplained, removes the decoder-gradient component parallel to each row before the step, and
decays the learning rate linearly to zero (the release README's training command). At sampling time, as in the
release's loaded SAEs, k latents are kept per patch.

Activations are read from a pipeline while it samples: each step's conditional half of the block's output, one row
per spatial position (the release caches the same half, ``SAE/hooked_sd_noised_pipeline.py``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from eval_learn.techniques.checkpoint import TrainingCheckpoint
from eval_learn.techniques.training import TrainingLoop


class TopKSAE(nn.Module):
    """``num_latents`` latents over ``d_in`` inputs, ``k`` of them active per patch."""

    def __init__(self, d_in: int, num_latents: int, k: int) -> None:
        super().__init__()
        self.d_in, self.num_latents, self.k = d_in, num_latents, k
        self.encoder = nn.Linear(d_in, num_latents)
        nn.init.zeros_(self.encoder.bias)
        # decoder initialised as the encoder's transpose, rows at unit norm (as the release does)
        self.W_dec = nn.Parameter(self.encoder.weight.detach().clone())
        self.b_dec = nn.Parameter(torch.zeros(d_in))
        self.normalise_decoder()

    @torch.no_grad()
    def normalise_decoder(self) -> None:
        self.W_dec /= self.W_dec.norm(dim=1, keepdim=True) + torch.finfo(self.W_dec.dtype).eps

    def pre_acts(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.encoder(x.to(self.W_dec.dtype) - self.b_dec))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Dense latents [rows, num_latents]: the k largest per row kept, the rest zero."""
        pre = self.pre_acts(x)
        top = pre.topk(self.k, dim=-1, sorted=False)
        return torch.zeros_like(pre).scatter_(-1, top.indices, top.values)

    def encode_batch_topk(self, x: torch.Tensor) -> torch.Tensor:
        """Dense latents with the k·rows largest over the whole batch kept (training)."""
        pre = self.pre_acts(x)
        flat = pre.flatten()
        top = flat.topk(self.k * pre.shape[0], sorted=False)
        return torch.zeros_like(flat).scatter(-1, top.indices, top.values).reshape(pre.shape)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return latents @ self.W_dec + self.b_dec

    def fvu(self, x: torch.Tensor, batch_topk: bool = True) -> torch.Tensor:
        """Fraction of variance unexplained: the training loss."""
        latents = self.encode_batch_topk(x) if batch_topk else self.encode(x)
        err = (self.decode(latents) - x).float().pow(2).sum()
        return err / (x - x.mean(0)).float().pow(2).sum()

    def tensors(self) -> dict[str, torch.Tensor]:
        return {name: t.detach().clone() for name, t in self.state_dict().items()}

    @classmethod
    def from_tensors(cls, state: dict[str, torch.Tensor], k: int) -> TopKSAE:
        num_latents, d_in = state["W_dec"].shape
        sae = cls(d_in, num_latents, k)
        sae.load_state_dict(state)
        return sae


def _remove_parallel_gradient(sae: TopKSAE) -> None:
    """Drop each decoder row's gradient component along the row (the unit-norm constraint), before the step."""

    def project(grad: torch.Tensor) -> torch.Tensor:
        w = sae.W_dec.detach()
        return grad - (grad * w).sum(-1, keepdim=True) * w

    sae.W_dec.register_hook(project)


class KSparseObjective:
    """The k-sparse autoencoder objective of Concept Steerers' release (kim-dahye/steerers,
    ``training/k_sparse_autoencoder.py`` and ``train_ksae.py``), for :func:`train_sae`.

    Per row the k largest pre-activations are kept (no batch TopK). The input has the decoder bias ``b`` removed and,
    as in the release, the reconstruction ``z·W + b`` is compared with that centred input ``x − b`` (mean squared
    error scaled by the inverse variance of a sample of rows: close to the fraction of variance unexplained). The AuxK
    term reconstructs the residual from the ``auxk`` largest latents among those not active for ``dead_steps`` steps,
    weighted by ``auxk_coef`` (with no dead latent it still moves ``b``, as the release's does). ``b`` starts at the
    geometric median of the sample; before each step the decoder rows are put at unit norm and their gradient's
    component along each row is removed; Adam at a constant learning rate."""

    lr_decay = False

    def __init__(self, auxk: int | None, auxk_coef: float, dead_steps: int, adam_eps: float) -> None:
        self.auxk, self.auxk_coef, self.dead_steps, self.adam_eps = auxk, auxk_coef, dead_steps, adam_eps
        self.mse_scale = 1.0
        self.steps_since_active = torch.zeros(0, dtype=torch.long)

    def start(self, sae: TopKSAE, sample: torch.Tensor) -> dict[str, torch.Tensor]:
        """Initialise ``b`` and the loss scale from ``sample``; returns the state a checkpoint must keep."""
        with torch.no_grad():
            sae.b_dec.copy_(geometric_median(sample[:32768].float()))
        self.mse_scale = float(1 / (sample.float().mean(0) - sample.float()).pow(2).mean())
        self.steps_since_active = torch.zeros(sae.num_latents, dtype=torch.long)
        return {"steps_since_active": self.steps_since_active}

    def loss(self, sae: TopKSAE, x: torch.Tensor) -> torch.Tensor:
        centred = x - sae.b_dec
        pre = sae.encoder(centred)
        vals, inds = pre.topk(sae.k, dim=-1)
        with torch.no_grad():
            fired = torch.zeros_like(self.steps_since_active).scatter_add_(
                0, inds.reshape(-1), (vals > 1e-3).to(torch.long).reshape(-1)
            )
            self.steps_since_active *= 1 - fired.clamp(max=1)
            self.steps_since_active += 1
        recons = torch.zeros_like(pre).scatter(-1, inds, torch.relu(vals)) @ sae.W_dec + sae.b_dec
        loss = self.mse_scale * (recons - centred).pow(2).mean()
        if self.auxk is None:
            return loss
        dead = (self.steps_since_active > self.dead_steps).to(pre.dtype)
        aux_vals, aux_inds = (pre * dead).topk(self.auxk, dim=-1)  # only the dead latents compete
        aux_recons = torch.zeros_like(pre).scatter(-1, aux_inds, torch.relu(aux_vals)) @ sae.W_dec + sae.b_dec
        target = centred - recons.detach() + sae.b_dec.detach()
        ratio = (aux_recons - target).pow(2).mean() / (target.mean(0) - target).pow(2).mean()
        return loss + self.auxk_coef * ratio.nan_to_num(0)

    @torch.no_grad()
    def before_step(self, sae: TopKSAE) -> None:
        sae.normalise_decoder()
        w, grad = sae.W_dec.detach(), sae.W_dec.grad
        if grad is not None:
            grad -= (grad * w).sum(-1, keepdim=True) * w


def geometric_median(points: torch.Tensor, eps: float = 1e-6, max_iterations: int = 100) -> torch.Tensor:
    """Weiszfeld's iteration from the mean (the release initialises the SAE's input bias with it)."""
    weights = torch.ones(points.shape[0], dtype=points.dtype)
    median = points.mean(0)
    objective = torch.linalg.norm(points - median, dim=1).sum()
    for _ in range(max_iterations):
        new_weights = weights / torch.clamp(torch.linalg.norm(points - median, dim=1), min=eps)
        median = (points * (new_weights / new_weights.sum())[:, None]).sum(0)
        previous, objective = objective, torch.linalg.norm(points - median, dim=1).sum()
        if abs(previous - objective) <= 1e-20 * objective:
            break
    return median


def train_sae(
    activations: torch.Tensor,
    *,
    expansion_factor: int,
    k: int,
    steps: int,
    batch_size: int,
    learning_rate: float,
    seed: int,
    checkpoint: TrainingCheckpoint | None = None,
    objective: KSparseObjective | None = None,
    label: str = "SAeUron SAE",
) -> tuple[TopKSAE, list[float]]:
    """Fit a TopK SAE to ``activations`` [rows, d_in]; returns it and every step's loss. Without ``objective``: the
    SAeUron release's training (batch TopK, FVU, linear decay); with one, its loss and constraints."""
    torch.manual_seed(seed)  # the encoder's initialisation
    sae = TopKSAE(activations.shape[1], activations.shape[1] * expansion_factor, k)
    params: dict[str, torch.Tensor] = dict(sae.named_parameters())
    generator = torch.Generator("cpu").manual_seed(seed)
    rows = min(batch_size, activations.shape[0])
    if objective is None:
        _remove_parallel_gradient(sae)
        optimizer = torch.optim.Adam(params.values(), lr=learning_rate)
    else:  # the release initialises from 8 batches' rows
        sample = activations[torch.randperm(activations.shape[0], generator=generator)[: 8 * rows]]
        state = objective.start(sae, sample)
        optimizer = torch.optim.Adam(params.values(), lr=learning_rate, eps=objective.adam_eps)
        params.update(state)  # saved and restored with the checkpoint (not optimised)
    decay = objective is None or objective.lr_decay

    def step_loss() -> torch.Tensor:
        if decay:
            done = int(optimizer.state[sae.b_dec]["step"]) if sae.b_dec in optimizer.state else 0
            for group in optimizer.param_groups:  # linear decay to zero, no warm-up (SAeUron's command)
                group["lr"] = learning_rate * (1 - done / steps)
        batch = activations[torch.randperm(activations.shape[0], generator=generator)[:rows]]
        return sae.fvu(batch) if objective is None else objective.loss(sae, batch)

    loop = TrainingLoop(label=label, steps=steps, optimizer=optimizer, params=params,
                        hint=f"learning_rate={learning_rate}", checkpoint=checkpoint, generators={"batches": generator},
                        after_step=sae.normalise_decoder if objective is None else None,
                        before_step=None if objective is None else lambda: objective.before_step(sae))  # fmt: skip
    losses = loop.run(step_loss)
    return sae, losses


def block_output(output: Any) -> torch.Tensor:
    """The hidden states of a UNet block's output (a tensor, a 1-tuple or a diffusers output object)."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, tuple):
        return output[0]
    return output.sample


def to_rows(hidden: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] -> [B, H·W, C]: one row per spatial position."""
    return hidden.permute(0, 2, 3, 1).reshape(hidden.shape[0], -1, hidden.shape[1])


@contextmanager
def recording(block: nn.Module) -> Iterator[list[torch.Tensor]]:
    """Collect, per UNet call, the conditional half of ``block``'s output as rows [B, H·W, C] (float32, CPU)."""
    calls: list[torch.Tensor] = []

    def hook(module: nn.Module, args: Any, output: Any) -> None:
        hidden = block_output(output).detach()
        cond = hidden.chunk(2)[1] if hidden.shape[0] % 2 == 0 else hidden  # CFG: [uncond; cond]
        calls.append(to_rows(cond).float().cpu())

    handle = block.register_forward_hook(hook)
    try:
        yield calls
    finally:
        handle.remove()


def collect_activations(
    pipe: Any,
    block: nn.Module,
    prompts: list[str],
    *,
    steps: int,
    guidance_scale: float,
    height: int,
    width: int,
    seed: int,
    batch_size: int = 16,
) -> torch.Tensor:
    """Sample ``prompts`` and return the block's activations [prompts, steps, H·W, C]."""
    out: list[torch.Tensor] = []
    for start in range(0, len(prompts), batch_size):
        batch = prompts[start : start + batch_size]
        with recording(block) as calls, torch.no_grad():
            pipe(batch, num_inference_steps=steps, guidance_scale=guidance_scale, height=height, width=width,
                 generator=[torch.Generator("cpu").manual_seed(seed + start + i) for i in range(len(batch))],
                 output_type="latent")  # fmt: skip
        out.append(torch.stack(calls, dim=1))  # [B, steps, H·W, C]
    return torch.cat(out)


@torch.no_grad()
def mean_latents(sae: TopKSAE, activations: torch.Tensor) -> torch.Tensor:
    """Per prompt and step, the SAE latents averaged over spatial positions: [prompts, steps, num_latents]
    (what the release's ``gather_sae_acts_*`` scripts store for feature selection)."""
    p, s, n, c = activations.shape
    return sae.encode(activations.reshape(-1, c)).reshape(p, s, n, -1).mean(2)
