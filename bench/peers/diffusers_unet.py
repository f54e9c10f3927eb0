#!/usr/bin/env python3
"""PyTorch + diffusers peer of `cargo run --release -p dpsynth --example bench_unet`.

Same U-Net config (bench/unet_mnist.json), same work: non-private training steps (eps loss
with class dropout 0.1, backward, AdamW lr 1e-4) on random data, then DDIM sampling with
classifier-free guidance as one forward of 2B rows per step. Needs torch and diffusers (see
scripts/fixtures/unet_parity.py for a venv that has both without touching the cached torch venv).
`--train-iters 0` skips training and `--sample-batch 0` or `--sample-steps 0` sampling; `--json`
adds a last line with every figure as one JSON object (as bench_unet's `--json`).

    python bench/peers/diffusers_unet.py [--config bench/unet_mnist.json] [--device cpu|cuda]
        [--train-batch 64] [--train-iters 10] [--sample-batch 16] [--sample-steps 50]
        [--guidance 3.0] [--threads N] [--json]
"""
import argparse
import json
import os
import sys
import time

import diffusers
import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DDPMScheduler, UNet2DModel


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--config", default="bench/unet_mnist.json")
    p.add_argument("--device", default="cpu")
    p.add_argument("--train-batch", type=int, default=64)
    p.add_argument("--train-iters", type=int, default=10)
    p.add_argument("--sample-batch", type=int, default=16)
    p.add_argument("--sample-steps", type=int, default=50)
    p.add_argument("--guidance", type=float, default=3.0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", action="store_true", help="print the figures as JSON, last line")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    with open(a.config) as f:
        cfg = json.load(f)
    torch.manual_seed(0)
    unet = UNet2DModel(**cfg).to(device)
    params = sum(q.numel() for q in unet.parameters())
    print(
        f"diffusers {diffusers.__version__} torch {torch.__version__} U-Net: {params} parameters, "
        f"device {device}, torch threads {torch.get_num_threads()}"
    )
    c, s = cfg["in_channels"], cfg["sample_size"]
    null = cfg["num_class_embeds"] - 1
    report = {
        "impl": "diffusers",
        "config": a.config,
        "params": params,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "train": train(unet, a, device, c, s, null) if a.train_iters > 0 else None,
        "sample": None,
    }
    if a.sample_batch > 0 and a.sample_steps > 0:
        report["sample"] = sample(unet, a, device, c, s, null)
    if a.json:
        print(json.dumps(report))


def train(unet, a, device, c, s, null):
    """Times non-private training steps after 2 warm-up steps."""
    train_sched = DDPMScheduler(num_train_timesteps=1000)
    opt = torch.optim.AdamW(unet.parameters(), lr=1e-4)
    b = a.train_batch
    x0 = torch.rand(b, c, s, s, device=device) * 2 - 1
    labels = torch.randint(0, null, (b,), device=device)

    def step():
        t = torch.randint(0, 1000, (b,), device=device)
        noise = torch.randn_like(x0)
        y = torch.where(torch.rand(b, device=device) < 0.1, torch.full_like(labels, null), labels)
        xt = train_sched.add_noise(x0, noise, t)
        eps = unet(xt, t, class_labels=y).sample
        loss = ((eps - noise) ** 2).flatten(1).mean(1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()

    unet.train()
    for _ in range(2):
        step()
    sync(device)
    start, cpu0 = time.perf_counter(), time.process_time()
    for _ in range(a.train_iters):
        step()
    sync(device)
    secs, cpu = time.perf_counter() - start, time.process_time() - cpu0
    n = b * a.train_iters
    print(
        f"train: batch {b}, {a.train_iters} iters in {secs:.2f}s wall, {cpu:.2f}s CPU: "
        f"{n / secs:.1f} samples/s, {n / cpu:.1f} samples/CPU-s"
    )
    return {"batch": b, "iters": a.train_iters, "wall_s": secs, "cpu_s": cpu}


def sample(unet, a, device, c, s, null):
    """Times DDIM sampling with guidance after a 2-step warm-up."""
    unet.eval()
    sched = DDIMScheduler(num_train_timesteps=1000)
    n = a.sample_batch
    y = torch.arange(n, device=device) % null

    @torch.no_grad()
    def run(steps):
        sched.set_timesteps(steps)
        x = torch.randn(n, c, s, s, device=device)
        yy = torch.cat([y, torch.full_like(y, null)])
        for t in sched.timesteps:
            tt = torch.full((2 * n,), int(t), device=device, dtype=torch.long)
            eps = unet(torch.cat([x, x]), tt, class_labels=yy).sample
            cond, uncond = eps[:n], eps[n:]
            eps = uncond + a.guidance * (cond - uncond)
            x = sched.step(eps, t, x, eta=0.0).prev_sample
        return x.clamp(-1, 1).cpu()

    run(2)
    sync(device)
    start, cpu0 = time.perf_counter(), time.process_time()
    out = run(a.sample_steps)
    sync(device)
    secs, cpu = time.perf_counter() - start, time.process_time() - cpu0
    n = out.shape[0]
    print(
        f"sample: DDIM-{a.sample_steps} guidance {a.guidance}, {n} images in {secs:.2f}s wall, {cpu:.2f}s CPU: "
        f"{n / secs:.2f} images/s, {n / cpu:.2f} images/CPU-s"
    )
    return {
        "batch": a.sample_batch,
        "steps": a.sample_steps,
        "guidance": a.guidance,
        "images": n,
        "wall_s": secs,
        "cpu_s": cpu,
    }


if __name__ == "__main__":
    main()
    # Skip the interpreter's teardown: with this torch it touches ~125 MiB more pages, which
    # would show in the peak resident set a parent reads from wait4 (bench/scaling.py).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
