"""SSD against its authors' release (if-loops/selective-synaptic-dampening, src/ssd.py): golden/ssd_release.json was
produced by running the release's own ParameterPerturber (the file's metadata says how); our importance and dampening
functions must reproduce it on the same module, data and Fisher tensors."""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F

from eval_learn.techniques.ssd import dampen, importance
from eval_learn.techniques.weights import weights_digest

GOLDEN = json.loads((Path(__file__).parent / "golden" / "ssd_release.json").read_text())


def classifier_and_data():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))
    g = torch.Generator().manual_seed(1)
    xf, yf = torch.randn(8, 6, generator=g), torch.randint(0, 3, (8,), generator=g)
    xr, yr = torch.randn(24, 6, generator=g), torch.randint(0, 3, (24,), generator=g)
    return model, (xf, yf), (torch.cat([xr, xf]), torch.cat([yr, yf]))


def test_importances_and_dampening_equal_the_release_on_a_classifier() -> None:
    model, forget, full = classifier_and_data()
    params = dict(model.named_parameters())

    def batches(x, y):  # the release's unshuffled DataLoader of batch 4, cross-entropy per batch
        return [lambda i=i: F.cross_entropy(model(x[i : i + 4]), y[i : i + 4]) for i in range(0, len(x), 4)]

    sums_f, n_f = importance(params, batches(*forget))
    sums_o, n_o = importance(params, batches(*full))
    fi = {k: v / float(n_f) for k, v in sums_f.items()}
    oi = {k: v / float(n_o) for k, v in sums_o.items()}
    golden = GOLDEN["classifier"]
    for name in params:
        for ours, key in ((fi[name], "forget_sum"), (oi[name], "original_sum")):
            assert (
                abs(float(ours.double().sum()) - golden["importances"][name][key])
                <= 1e-6 * golden["importances"][name][key]
            )
    counts = dampen(params, fi, oi, golden["alpha"], golden["lambda"])
    assert {n: counts.get(n, 0) for n in params} == golden["selected"]
    for name, p in params.items():
        after = golden["after"][name]
        assert abs(float(p.detach().double().sum()) - after["sum"]) <= 1e-6 * max(1.0, abs(after["sum"])), name
        assert abs(float(p.detach().double().abs().sum()) - after["abs_sum"]) <= 1e-6 * after["abs_sum"], name


def test_dampening_equals_the_release_bit_for_bit_on_the_tiny_unet(tiny_pipe) -> None:
    unet = tiny_pipe.unet
    golden = GOLDEN["unet"]
    g = torch.Generator().manual_seed(7)
    forget, original = {}, {}
    for name, p in unet.named_parameters():  # the golden's seeded Fisher tensors, drawn in the same order
        forget[name] = torch.rand(p.shape, generator=g) ** 4
        original[name] = torch.rand(p.shape, generator=g) ** 4
    params = {n: p for n, p in unet.named_parameters()}
    before = {n: p.detach().clone() for n, p in params.items()}
    with torch.no_grad():
        counts = dampen(params, forget, original, golden["alpha"], golden["lambda"])
    assert counts == golden["selected"]
    assert sorted(n for n, p in params.items() if not torch.equal(before[n], p)) == golden["changed_tensors"]
    assert weights_digest({n: p.detach() for n, p in params.items()}) == golden["after_sha256"]  # exact
