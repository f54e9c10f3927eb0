"""Peer benchmark: a DP-LoDA fine-tuning step of the shipped base U-Net in PyTorch + Opacus.

Mirrors `bench/finetune_step.rs` (see `bench/README.md`): the base model `models/mnist-base` loaded
with diffusers' `UNet2DModel.from_pretrained`, frozen, with the LoDA adapters dpsynth attaches for
`dpsynth finetune --mode loda` with `configs/run-default.toml` (crates/dpsynth/src/nn/adapter.rs):
on every ResNet conv (conv1, conv2, conv_shortcut) W, the layer returns W x + (alpha/r) B(g(A x)),
with A a k x k conv C_in -> r with W's stride/padding/dilation and no bias (PyTorch default init),
g(u) = u + D2 silu(D1 u) with D1, D2 1x1 convs r -> r with bias (D1 default init, D2 zeros), B a
1x1 conv r -> C_out without bias, zeros; r = 4, alpha = 4. The class embedding is trained too, as
dpsynth does. Loss: per example, the mean squared error of the predicted noise (K = 1 draw per
example; Opacus has no notion of K), same batch every step (random images in [-1, 1], random
labels, class dropout 0.1 to the null class, random timesteps and noise); Adam lr 2e-3; clip 1.0,
noise multiplier 1.0.

Step kinds, timed in this one process and interleaved rep by rep (median wall-clock and process
CPU time): `nonprivate` (mean loss, backward, Adam), `hooks` (Opacus PrivacyEngine,
grad_sample_mode="hooks": per-sample gradients, clipping, noise) and `ghost` (Opacus fast gradient
clipping; Opacus 1.6 has ghost norms for Linear and Embedding only, so the adapters' convs get
materialised per-sample gradients). Peak memory (VmHWM) comes from child processes that set up
and then run only one kind of step.

`--config JSON` takes a randomly initialised U-Net of that diffusers config (seed 0) and the DDPM
linear schedule (1e-4 to 0.02 over 1000 steps, as `bench_unet`) instead of the base folder, with
the same adapters and trainable set. `--only KIND` times that one kind alone (no non-private
reference, no peak-memory children) and prints the JSON line; `bench/scaling.py` runs it so.

    python bench/peers/opacus_unet_loda.py [--threads N] [--batch 64] [--reps 20] [--modes hooks,ghost]
        [--base DIR | --config JSON] [--only nonprivate|hooks|ghost]
"""

import argparse
import json
import os
import sys
import warnings

import torch
import torch.nn as nn
import torch.nn.functional as F
from opacus.grad_sample import register_grad_sampler
from opacus.grad_sample.conv import compute_conv_grad_sample
from peer_harness import build_steps, child_peak, make_private, time_interleaved, vm_hwm_mib

warnings.filterwarnings("ignore")


@register_grad_sampler(nn.Conv2d)
def conv2d_grad_sample(layer, activations, backprops):
    """Opacus's own Conv2d grad sampler, given contiguous (NCHW) activations.

    Opacus 1.6's (`compute_conv_grad_sample`) unfolds the activations with `unfold2d`, an
    `as_strided` view that assumes NCHW strides, so a channels-last input gets wrong per-sample
    gradients. diffusers' attention blocks leave the U-Net's activations channels-last: six of the
    shipped base's adapted convs take such an input (`check_grad_sample.py` shows it). Registered
    on import, for every Opacus step of these peers; the copy is made only for such inputs."""
    return compute_conv_grad_sample(layer, [a.contiguous() for a in activations], backprops)

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")


class LowRankConv(nn.Module):
    """dpsynth's LowRank<Conv2d> (LoDA): x -> scale * B(u + D2 silu(D1 u)), u = A x."""

    def __init__(self, base: nn.Conv2d, rank: int, alpha: float):
        super().__init__()
        c_in, c_out = base.in_channels, base.out_channels
        self.A = nn.Conv2d(
            c_in,
            rank,
            base.kernel_size,
            stride=base.stride,
            padding=base.padding,
            dilation=base.dilation,
            bias=False,
        )
        self.D1 = nn.Conv2d(rank, rank, 1)
        self.D2 = nn.Conv2d(rank, rank, 1)
        self.B = nn.Conv2d(rank, c_out, 1, bias=False)
        nn.init.zeros_(self.D2.weight)
        nn.init.zeros_(self.D2.bias)
        nn.init.zeros_(self.B.weight)
        self.scale = alpha / rank

    def forward(self, x):
        u = self.A(x)
        g = u + self.D2(F.silu(self.D1(u)))
        return self.B(g) * self.scale


class Adapted(nn.Module):
    """A frozen conv plus its adapter."""

    def __init__(self, base: nn.Conv2d, rank: int, alpha: float):
        super().__init__()
        self.base = base
        self.adapter = LowRankConv(base, rank, alpha)

    def forward(self, x):
        return self.base(x) + self.adapter(x)


def resnets(unet):
    for block in list(unet.down_blocks) + [unet.mid_block] + list(unet.up_blocks):
        yield from block.resnets


def build(base, rank, alpha, config=None):
    """The base U-Net of folder `base` (or, given `config`, the path of a diffusers config.json,
    a random one of that config), frozen, with LoDA on every ResNet conv and a trainable class
    embedding; returns (the U-Net, the number of adapted convs)."""
    from diffusers import UNet2DModel
    from diffusers.utils import logging

    logging.set_verbosity_error()  # "accelerate not found": loading speed only
    if config:
        with open(config) as f:
            unet = UNet2DModel(**json.load(f))
    else:
        unet = UNet2DModel.from_pretrained(base)
    unet.requires_grad_(False)
    count = 0
    for r in resnets(unet):
        for name in ("conv1", "conv2", "conv_shortcut"):
            conv = getattr(r, name, None)
            if isinstance(conv, nn.Conv2d):
                setattr(r, name, Adapted(conv, rank, alpha))
                count += 1
    unet.class_embedding.weight.requires_grad_(True)
    unet.train()
    return unet, count


def schedule(base, config=None):
    """alphas_cumprod of folder `base`'s scheduler_config.json (DDPM linear betas) and its number
    of timesteps; given `config` (a random U-Net), the DDPM linear schedule."""
    cfg = {"beta_start": 1e-4, "beta_end": 0.02, "num_train_timesteps": 1000}
    if not config:
        with open(os.path.join(base, "scheduler_config.json")) as f:
            cfg = json.load(f)
    assert cfg.get("beta_schedule", "linear") == "linear", cfg
    betas = torch.linspace(cfg["beta_start"], cfg["beta_end"], cfg["num_train_timesteps"])
    return torch.cumprod(1.0 - betas, 0), cfg["num_train_timesteps"]


class EpsLoss(nn.Module):
    """Per-example mean squared error over C, H, W; `reduction` as Opacus's ghost mode expects."""

    def __init__(self):
        super().__init__()
        self.reduction = "mean"

    def forward(self, pred, target):
        per_example = (pred - target).square().flatten(1).mean(1)
        return per_example if self.reduction == "none" else per_example.mean()


def make_step(kind, a):
    """Returns (step closure, trainable parameter count) for `kind` (nonprivate, hooks, ghost)."""
    torch.manual_seed(0)
    unet, _ = build(a.base, a.rank, a.rank, a.config)
    acp, steps = schedule(a.base, a.config)
    null = unet.config.num_class_embeds - 1
    b = a.batch
    x0 = torch.rand(b, unet.config.in_channels, unet.config.sample_size, unet.config.sample_size)
    x0 = x0 * 2 - 1
    labels = torch.randint(0, null, (b,))
    labels = torch.where(torch.rand(b) < 0.1, torch.full_like(labels, null), labels)
    t = torch.randint(0, steps, (b,))
    noise = torch.randn_like(x0)
    params = [p for p in unet.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=2e-3)
    criterion = EpsLoss()
    model = unet
    if kind != "nonprivate":
        model, opt, criterion = make_private(unet, opt, criterion, x0, labels, kind)

    sa = acp[t].sqrt().view(-1, 1, 1, 1)
    sb = (1 - acp[t]).sqrt().view(-1, 1, 1, 1)

    def step():
        opt.zero_grad(set_to_none=True)
        x_t = sa * x0 + sb * noise
        eps = model(x_t, t, class_labels=labels).sample
        loss = criterion(eps, noise)
        loss.backward()
        opt.step()

    return step, sum(p.numel() for p in params)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", default=os.path.join(ROOT, "models", "mnist-base"))
    ap.add_argument("--config", default=None, help="a diffusers config.json: random weights")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--rank", type=int, default=4)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--modes", default="hooks,ghost")
    ap.add_argument("--peak", default=None, help="child mode: setup or a step kind")
    ap.add_argument("--only", default=None, help="time this one kind alone")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)

    if a.peak:
        if a.peak == "setup":
            make_step("nonprivate", a)
        else:
            step, _ = make_step(a.peak, a)
            for _ in range(max(a.warmup, 3)):
                step()
        print(f"vmhwm_mib={vm_hwm_mib():.1f}")
        return

    kinds = [a.only] if a.only else ["nonprivate"] + [m for m in a.modes.split(",") if m]
    counts = []

    def make(kind):
        step, n = make_step(kind, a)
        counts.append(n)
        return step

    steps = build_steps(kinds, make, a.warmup)
    if a.only and a.only not in steps:
        raise SystemExit(f"{a.only} is unavailable")
    trainable = counts[0]
    wall, cpu = time_interleaved(steps, a.reps)
    if a.only:
        print(f"{a.only}: {trainable} trainable, batch {a.batch}, {wall[a.only]:.1f} ms wall")
        print(
            json.dumps(
                {
                    "impl": "pytorch/opacus",
                    "config": a.config or a.base,
                    "trainable": trainable,
                    "batch": a.batch,
                    "threads": torch.get_num_threads(),
                    "reps": a.reps,
                    a.only: {"wall_ms": wall[a.only], "cpu_ms": cpu[a.only]},
                }
            )
        )
        return

    def peak(kind):
        args = ["--batch", a.batch, "--base", a.base, "--rank", a.rank, "--warmup", a.warmup]
        args += ["--config", a.config] if a.config else []
        return child_peak(__file__, kind, args + ["--threads", torch.get_num_threads()])

    import diffusers
    import opacus

    setup = peak("setup")
    print(
        f"PyTorch {torch.__version__}, diffusers {diffusers.__version__}, Opacus "
        f"{opacus.__version__}; {a.config or a.base}, LoDA r = {a.rank}, {trainable} trainable "
        f"parameters; batch {a.batch}, K = 1, f32, CPU, {torch.get_num_threads()} threads, "
        f"{a.reps} reps (median)"
    )
    print("step          wall ms   CPU ms  wall ms/ex  CPU ms/ex  wall/np  CPU/np  peak RSS +MiB")
    result = {"impl": "pytorch/opacus", "batch": a.batch, "threads": torch.get_num_threads()}
    base_wall, base_cpu = wall["nonprivate"], cpu["nonprivate"]
    for k in steps:
        w, c, m = wall[k], cpu[k], peak(k)
        print(
            f"{k:<12} {w:8.1f} {c:8.1f} {w / a.batch:11.3f} {c / a.batch:10.3f} "
            f"{w / base_wall:8.3f} {c / base_cpu:7.3f} {m - setup:14.1f}"
        )
        result[k] = {"wall_ms": w, "cpu_ms": c, "vmhwm_mib": m}
    result["vmhwm_setup_mib"] = setup
    print(f"peak RSS (VmHWM) of the setup child: {setup:.1f} MiB")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
    # Skip the interpreter's teardown: with this torch it touches ~125 MiB more pages, which
    # would show in the peak resident set a parent reads from wait4 (bench/scaling.py).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
