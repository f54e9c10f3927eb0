"""Checks, independently of dpsynth's Rust code, that a shipped base model uses its class labels.

Loads the model folder with diffusers' UNet2DModel and measures the ε-prediction MSE on held-out
public digits (font-digits:test) at several timesteps with the true labels, with labels shifted by
one class, and with the null class. A model that uses its labels has true < null < shifted.
Optionally also writes a DDIM-50 grid sampled with diffusers' own DDIMScheduler, to compare with
`dpsynth sample`.

    /tmp/effvenv/bin/python scripts/check_base_conditioning.py \
        --model models/mnist-base --data data/font-digits [--grid out/diffusers-grid.png]

(The venv is the one bench/README.md builds for the Opacus/diffusers peers.)
"""

import argparse

import numpy as np
import torch
from diffusers import DDIMScheduler, UNet2DModel


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="models/mnist-base")
    ap.add_argument("--data", default="data/font-digits")
    ap.add_argument("--n", type=int, default=512)
    ap.add_argument("--grid", help="also write a DDIM-50, guidance-3 grid PNG here")
    a = ap.parse_args()
    torch.set_num_threads(1)
    m = UNet2DModel.from_pretrained(a.model).eval()
    null = m.config.num_class_embeds - 1
    x = np.fromfile(f"{a.data}/t10k-images-idx3-ubyte", dtype=np.uint8)[16:]
    y = np.fromfile(f"{a.data}/t10k-labels-idx1-ubyte", dtype=np.uint8)[8:]
    x0 = torch.tensor(x.reshape(-1, 1, 28, 28)[: a.n]).float() / 127.5 - 1
    y = torch.tensor(y[: a.n]).long()
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
        if a.grid:
            from PIL import Image

            s = DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear", clip_sample=True)
            s.set_timesteps(50)
            labels = torch.arange(null).repeat_interleave(10)
            xs = torch.randn(len(labels), 1, 28, 28, generator=torch.Generator().manual_seed(0))
            for t in s.timesteps:
                tt = torch.full((len(labels),), int(t))
                ec = m(xs, tt, class_labels=labels).sample
                eu = m(xs, tt, class_labels=torch.full_like(labels, null)).sample
                xs = s.step(eu + 3.0 * (ec - eu), t, xs).prev_sample
            img = ((xs.clamp(-1, 1) + 1) * 127.5).byte().numpy()
            grid = img.reshape(null, 10, 28, 28).transpose(0, 2, 1, 3).reshape(null * 28, 280)
            Image.fromarray(grid).save(a.grid)
            print(f"wrote {a.grid}")


if __name__ == "__main__":
    main()
