"""Checks the per-sample gradients of the whole-pipeline peer against brute force.

The peer of `dpsynth run` (`peer_pipeline.py`) clips Opacus's per-sample gradients of the LoDA U-Net
(`build` of `opacus_unet_loda.py`: the shipped base, frozen, LoDA rank 4 on its 30 ResNet convs, the
class embedding trained). This script takes one batch as the peer's fine-tuning draws it (images in
[-1, 1], timesteps uniform on 0..999, class dropout to the null class, one noise draw per example),
computes its per-sample gradients with Opacus's `GradSampleModule` (hooks, mean loss as the peer's
`EpsLoss`, the peers' Conv2d grad sampler of `opacus_unet_loda.py`), and compares them with brute
force: one backward pass of each example's own loss through the unwrapped model. It prints, per
trainable tensor, the largest absolute difference relative to the largest brute-force entry, and the
per-example gradient norms of both, which are what clipping reads. It exits with status 1 if any
relative difference exceeds `--tol` (default 1e-4: float32 sums in a different order agree to about
1e-6 of the tensor's largest entry; a wrong rule is off by order 1).

dpsynth's side of the same check is `crates/dpsynth/tests/real_base_norms.rs`.

    python bench/peers/check_grad_sample.py [--base models/mnist-base] [--batch 8] [--seed 0]
        [--threads N] [--tol 1e-4]
"""

import argparse
import os
import sys
import warnings

import torch
from opacus import GradSampleModule
from opacus_unet_loda import EpsLoss, build, schedule
from peer_harness import ROOT, RECIPE

warnings.filterwarnings("ignore")


def draw_batch(unet, acp, num_t, batch, seed):
    """(x_t, t, labels, noise) as the peer's fine-tuning draws one physical batch."""
    g = torch.Generator().manual_seed(seed)
    null = unet.config.num_class_embeds - 1
    c, s = unet.config.in_channels, unet.config.sample_size
    x0 = torch.rand(batch, c, s, s, generator=g) * 2 - 1
    labels = torch.randint(0, null, (batch,), generator=g)
    drop = torch.rand(batch, generator=g) < RECIPE["class_dropout"]
    labels = torch.where(drop, torch.full_like(labels, null), labels)
    labels[0] = null  # the null row's rule is always exercised
    t = torch.randint(0, num_t, (batch,), generator=g)
    noise = torch.randn(x0.shape, generator=g)
    ab = acp[t].view(-1, 1, 1, 1)
    return ab.sqrt() * x0 + (1 - ab).sqrt() * noise, t, labels, noise


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--base", default=os.path.join(ROOT, "models", "mnist-base"))
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--tol", type=float, default=1e-4)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    unet, adapted = build(a.base, 4, 4.0)
    # Random adapter B and D2 weights: at their initialisation (zeros) the gradients of A, D1
    # and D2 (B = 0) or of D1 (D2 = 0) are zero and would agree trivially.
    with torch.no_grad():
        for name, p in unet.named_parameters():
            if p.requires_grad and name.endswith(("adapter.B.weight", "adapter.D2.weight")):
                p.normal_(0, 0.05)
    acp, num_t = schedule(a.base)
    x_t, t, labels, noise = draw_batch(unet, acp, num_t, a.batch, a.seed)
    params = {n: p for n, p in unet.named_parameters() if p.requires_grad}

    brute = {n: [] for n in params}
    for i in range(a.batch):
        unet.zero_grad(set_to_none=True)
        pred = unet(x_t[i : i + 1], t[i : i + 1], class_labels=labels[i : i + 1]).sample
        EpsLoss()(pred, noise[i : i + 1]).backward()
        for n, p in params.items():
            brute[n].append(p.grad.detach().clone())
    brute = {n: torch.stack(g) for n, g in brute.items()}

    unet.zero_grad(set_to_none=True)
    gsm = GradSampleModule(unet, batch_first=True, loss_reduction="mean")
    pred = gsm(x_t, t, class_labels=labels).sample
    EpsLoss()(pred, noise).backward()
    opacus = {n: p.grad_sample.detach() for n, p in params.items()}
    gsm._close()

    worst = 0.0
    print(f"{adapted} adapted convs, {len(params)} trainable tensors, batch {a.batch}")
    for n in params:
        scale = brute[n].abs().max().item()
        diff = (opacus[n] - brute[n]).abs().max().item()
        rel = diff / scale if scale > 0 else diff
        worst = max(worst, rel)
        if rel > a.tol:
            print(f"MISMATCH {n}: max |opacus - brute| / max |brute| = {rel:.3e}")
    norms_b = torch.cat([g.flatten(1) for g in brute.values()], 1).norm(dim=1)
    norms_o = torch.cat([g.flatten(1) for g in opacus.values()], 1).norm(dim=1)
    print("per-example norms, brute force:", " ".join(f"{v:.6f}" for v in norms_b.tolist()))
    print("per-example norms, Opacus:     ", " ".join(f"{v:.6f}" for v in norms_o.tolist()))
    print(f"largest relative difference over all tensors: {worst:.3e} (tolerance {a.tol:g})")
    sys.exit(1 if worst > a.tol else 0)


if __name__ == "__main__":
    main()
