"""Checks, independently of dpsynth's Rust code, that a shipped base model uses its class labels.

Loads the model folder with diffusers' UNet2DModel and, on held-out public digits
(font-digits:test):

1. measures the ε-prediction MSE at several timesteps with the true labels, with labels shifted by
   one class, and with the null class (a model that uses its labels has true < null < shifted);
2. classifies each digit by the label with the lowest ε-prediction error (summed over a few noise
   draws): a model that knows its classes scores far above 10%.

With --grid PREFIX it also writes two guidance-3, 50-step grids drawn with diffusers' own
schedulers, PREFIX-ddpm.png (DDPMScheduler) and PREFIX-ddim.png (DDIMScheduler, η = 0), to compare
with `dpsynth sample --sampler ddpm|ddim`.

    ~/.cache/dpsynth/venv-peers/bin/python scripts/check_base_conditioning.py \\
        --model models/mnist-base-fonts --data data/font-digits [--grid out/diffusers-grid]

(The venv is the one bench/README.md builds for the Opacus/diffusers peers.)
"""

import argparse

import numpy as np
import torch
from diffusers import DDIMScheduler, DDPMScheduler, UNet2DModel


def load_digits(folder, n):
    x = np.fromfile(f"{folder}/t10k-images-idx3-ubyte", dtype=np.uint8)[16:]
    y = np.fromfile(f"{folder}/t10k-labels-idx1-ubyte", dtype=np.uint8)[8:]
    x0 = torch.tensor(x.reshape(-1, 1, 28, 28)[:n]).float() / 127.5 - 1
    return x0, torch.tensor(y[:n]).long()


def grid(m, scheduler, null, path, w=3.0):
    from PIL import Image

    scheduler.set_timesteps(50)
    labels = torch.arange(null).repeat_interleave(10)
    xs = torch.randn(len(labels), 1, 28, 28, generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(1)
    for t in scheduler.timesteps:
        tt = torch.full((len(labels),), int(t))
        ec = m(xs, tt, class_labels=labels).sample
        eu = m(xs, tt, class_labels=torch.full_like(labels, null)).sample
        xs = scheduler.step(eu + w * (ec - eu), t, xs, generator=g).prev_sample
    img = ((xs.clamp(-1, 1) + 1) * 127.5).byte().numpy()
    rows = img.reshape(null, 10, 28, 28).transpose(0, 2, 1, 3).reshape(null * 28, 280)
    Image.fromarray(rows).save(path)
    print(f"wrote {path}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="models/mnist-base")
    ap.add_argument("--data", default="data/font-digits")
    ap.add_argument("--n", type=int, default=512, help="digits for the MSE table")
    ap.add_argument("--n-classify", type=int, default=200, help="digits to classify")
    ap.add_argument("--grid", help="also write PREFIX-ddpm.png and PREFIX-ddim.png")
    a = ap.parse_args()
    torch.set_num_threads(1)
    m = UNet2DModel.from_pretrained(a.model).eval()
    null = m.config.num_class_embeds - 1
    x0, y = load_digits(a.data, a.n)
    betas = torch.linspace(1e-4, 0.02, 1000)
    ab = torch.cumprod(1 - betas, 0)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for t in [50, 200, 500, 800]:
            noise = torch.randn(x0.shape, generator=g)
            tt = torch.full((len(y),), t)
            xt = ab[t].sqrt() * x0 + (1 - ab[t]).sqrt() * noise
            row = {}
            for name, lab in [
                ("true", y),
                ("shifted", (y + 1) % null),
                ("null", torch.full_like(y, null)),
            ]:
                row[name] = ((m(xt, tt, class_labels=lab).sample - noise) ** 2).mean().item()
            print(f"t={t}: " + "  ".join(f"{k} {v:.5f}" for k, v in row.items()))
        xc, yc = x0[: a.n_classify], y[: a.n_classify]
        for t in [100, 300, 500, 700]:
            err = torch.zeros(len(yc), null)
            for _ in range(3):
                noise = torch.randn(xc.shape, generator=g)
                xt = ab[t].sqrt() * xc + (1 - ab[t]).sqrt() * noise
                tt = torch.full((len(yc),), t)
                for c in range(null):
                    eps = m(xt, tt, class_labels=torch.full_like(yc, c)).sample
                    err[:, c] += ((eps - noise) ** 2).flatten(1).mean(1)
            acc = (err.argmin(1) == yc).float().mean().item()
            print(f"t={t}: classify by lowest error: {100 * acc:.1f}% of {len(yc)}")
        if a.grid:
            grid(m, DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear"), null,
                 f"{a.grid}-ddpm.png")
            grid(m, DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear"), null,
                 f"{a.grid}-ddim.png")


if __name__ == "__main__":
    main()
