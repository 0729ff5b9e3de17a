"""SAeUron parity: the release's own SAE, feature score and masked-unlearning hook (cywinski/SAeUron) were run on tiny
inputs outside the project; the golden file holds the SAE's tensors, the concept latents, the hook's inputs and
outputs and the features it selected (its metadata names the commit and the command). Our statistics, selection and
hook must reproduce them."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open

from eval_learn.techniques.sae_training import TopKSAE
from eval_learn.techniques.saeuron import SAeUronHook, latent_statistics

GOLDEN = Path(__file__).parent / "golden" / "saeuron_release.safetensors"


def test_selection_and_hook_match_the_release() -> None:
    with safe_open(str(GOLDEN), "pt") as f:
        meta = f.metadata()
        t = {k: f.get_tensor(k) for k in f.keys()}
    assert meta["commit"] == "1a4302aa47f436fd2df68ece1d763248b83ece37"
    sae = TopKSAE.from_tensors({k: t[k] for k in ("encoder.weight", "encoder.bias", "W_dec", "b_dec")}, int(meta["k"]))
    others = [t[k] for k in sorted(t) if k.startswith("latents.") and k != "latents.red"]
    stats = latent_statistics([t["latents.red"], *others])
    hook = SAeUronHook(sae, stats, float(meta["percentile"]), float(meta["multiplier"]), "release")
    assert [f.tolist() for f in hook.features] == json.loads(meta["selected"])
    for step, (x, expected) in enumerate(zip(t["inputs"], t["outputs"], strict=True)):
        hook.step = step
        with torch.no_grad():  # as in every sampling call
            out = hook(None, (), (x,))[0]
        assert not torch.allclose(out, x)  # the case changes the activations
        torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)  # measured: see the docs page
