"""Peer of `dpsynth run` (configs/run-default.toml): the whole default run in PyTorch + Opacus +
diffusers, timed stage by stage like dpsynth's report.json (`seconds`). The settings are read from
that config (`run_settings` in `peer_harness.py`, which refuses a config this does not reproduce).

1. **finetune**: the shipped base `models/mnist-base` loaded with diffusers'
   `UNet2DModel.from_pretrained`, frozen, with dpsynth's LoDA adapters (rank 4, alpha 4) on all
   30 of its ResNet convs (conv1, conv2, conv_shortcut) and the class embedding trainable, 48,624
   parameters as dpsynth (`build` of `opacus_unet_loda.py`, the
   fine-tuning-step peer); private set mnist:train (60,000). Opacus `PrivacyEngine`
   (`grad_sample_mode="hooks"`) with `make_private_with_epsilon`: epsilon 10, delta 1e-5, 1 epoch,
   Poisson sampling at q = 1000 / 60000 (expected batch 1000, 60 steps), clip 0.003, flat
   clipping, and `BatchMemoryManager` for physical batches of 250. The accountant that calibrates
   sigma is Opacus's **PRV** accountant by default (`--accountant rdp` for RDP); dpsynth uses its
   own PLD accountant. The sigma Opacus picks is printed and written to the JSON, as is the
   epsilon it reports at the end. Loss as dpsynth's `finetune`: per example, the mean squared
   error of the predicted noise for one (timestep, noise) draw (K = 1), timesteps uniform on
   0..999, labels replaced by the null class with probability 0.1, images scaled to [-1, 1];
   Adam lr 3e-3, betas (0.9, 0.999), eps 1e-8. Then, as dpsynth's fine-tuning job does inside
   this stage, the trained weights are written (with `--out`) and a preview of 10 images per
   class is drawn (DDPM, 50 steps, seed 0; written as finetune-grid.png with `--out`).
2. **sample**: 1,000 images per class (class-major order, batches of 250) with diffusers'
   `DDPMScheduler` from the model folder's scheduler_config.json (linear betas 1e-4..0.02 over
   1,000 steps), `set_timesteps(10)`: "leading" spacing 900, 800, ..., 0, the "fixed small"
   posterior variance, x0 clipped to [-1, 1], as dpsynth's "ddpm" sampler. Guidance 1.0:
   dpsynth then runs the conditional model only (one forward of B rows per step), and so does
   this. Images are clamped to [-1, 1] and rounded to bytes, as dpsynth stores them.
3. **evaluate**: dpsynth's downstream CNN (`Net` of `opacus_dp_step.py`: conv 16 8x8/2 ->
   GroupNorm(4) -> tanh -> maxpool 2/1 -> conv 32 4x4/2 -> GroupNorm(4) -> tanh -> maxpool 2/1
   -> linear 512->32 -> tanh -> linear 32->10), trained as dpsynth's `train_and_test`: seed 0,
   10% of the synthetic images held out (a randperm), SGD lr 0.05 momentum 0.9, batch 128,
   15 epochs, mean cross-entropy, the epoch with the best held-out accuracy kept, then tested on
   mnist:test (batches of 1,000).

`total` runs from before the data are read to the end of the evaluation (it includes reading
MNIST and, with `--out`, writing the samples as PNG files and grid.png, as dpsynth's total does;
it does not include Python's imports, reported apart as `import`). dpsynth's memorization stage
has no peer here. Each stage's wall-clock and process CPU seconds are printed and, with `--json PATH`,
written as JSON.

`--scale F` shrinks the run for a quick check: the private set becomes round(60 F) whole
expected batches of 1,000 (at least one; class-balanced, a seeded choice), so the run takes
round(60 F) steps of the full run's size (q = 1000 / N is then also Opacus's 1 / len(loader));
images per class round(1000 F). Batch, physical batch, epochs (1 of fine-tuning, 15 downstream)
and the test set are kept. Shrinking the batch instead would keep q and sigma but drown the
gradient in noise (Adam at the default lr then walks the adapters away from the base).
`bench/peers/pipeline_vs_peer.py` writes dpsynth a config scaled the same way.

    python bench/peers/peer_pipeline.py [--threads N] [--scale F] [--json PATH] [--out DIR]
        [--accountant prv|rdp] [--config configs/run-default.toml] [--data data/mnist]
"""

import time

_T_IMPORT = time.perf_counter()

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import warnings  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from opacus_dp_step import Net  # noqa: E402
from opacus_unet_loda import EpsLoss, build, schedule  # noqa: E402
from peer_harness import ROOT, run_settings  # noqa: E402

warnings.filterwarnings("ignore")


def read_idx(path):
    """An uncompressed IDX file (MNIST's format) as a numpy array."""
    with open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    assert data[2] == 0x08, f"{path}: not unsigned bytes"
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load_mnist(data_dir, split):
    """(uint8 images [N, 1, 28, 28], int64 labels [N]) of MNIST's `train` or `t10k` split."""
    x = read_idx(os.path.join(data_dir, f"{split}-images-idx3-ubyte"))
    y = read_idx(os.path.join(data_dir, f"{split}-labels-idx1-ubyte"))
    return torch.from_numpy(x.copy()).unsqueeze(1), torch.from_numpy(y.astype(np.int64))


def balanced_subset(labels, n, classes=10, seed=0):
    """`n` indices, an equal share from each class (the remainder from the first classes),
    a seeded choice, in their original order (what dpsynth's `@N` suffix asks for; dpsynth draws
    its own choice with ChaCha8, so the images differ)."""
    rng = np.random.default_rng(seed)
    y = labels.numpy()
    picked = []
    for c in range(classes):
        want = n // classes + (1 if c < n % classes else 0)
        picked.append(rng.choice(np.flatnonzero(y == c), want, replace=False))
    return torch.from_numpy(np.sort(np.concatenate(picked)))


def to_unit(x_u8):
    """Bytes to [-1, 1], as dpsynth's `Dataset::batch`."""
    return x_u8.float() / 127.5 - 1.0


def to_bytes(x):
    """[-1, 1] to bytes, as dpsynth's `Dataset::from_unit_tensor`."""
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


class Stages:
    """Wall-clock and process CPU seconds per stage."""

    def __init__(self):
        self.wall, self.cpu = {}, {}

    def run(self, name, fn, *args):
        t, c = time.perf_counter(), time.process_time()
        out = fn(*args)
        self.wall[name] = time.perf_counter() - t
        self.cpu[name] = time.process_time() - c
        print(f"== {name}: {self.wall[name]:.1f} s wall, {self.cpu[name]:.1f} s CPU", flush=True)
        return out


def finetune(a, s, train_x, train_y, out):
    """DP-LoDA fine-tuning with Opacus; returns (the U-Net, a dict of what was run)."""
    from opacus import PrivacyEngine
    from opacus.utils.batch_memory_manager import BatchMemoryManager

    unet, adapted = build(s["base"], s["rank"], float(s["rank"]))
    acp, num_t = schedule(s["base"])
    null = unet.config.num_class_embeds - 1
    params = [p for p in unet.parameters() if p.requires_grad]
    trainable = sum(p.numel() for p in params)
    opt = torch.optim.Adam(params, lr=s["lr"], betas=s["adam_betas"], eps=s["adam_eps"])
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(train_x, train_y), batch_size=s["batch"]
    )
    engine = PrivacyEngine(accountant=a.accountant)
    model, opt, loader = engine.make_private_with_epsilon(
        module=unet,
        optimizer=opt,
        data_loader=loader,
        target_epsilon=s["epsilon"],
        target_delta=s["delta"],
        epochs=s["epochs"],
        max_grad_norm=s["clip"],
        poisson_sampling=True,
        grad_sample_mode="hooks",
    )
    sigma = opt.noise_multiplier
    q = loader.sample_rate
    print(
        f"Opacus {a.accountant} accountant: sigma = {sigma:.4f} for epsilon {s['epsilon']} at "
        f"delta {s['delta']:g}, q = {q:.5f}, {len(loader)} steps; {adapted} adapted convs, "
        f"{trainable} trainable parameters",
        flush=True,
    )
    criterion = EpsLoss()
    steps = 0
    report_every = max(1, len(loader) // 10)
    with BatchMemoryManager(
        data_loader=loader, max_physical_batch_size=s["physical_batch"], optimizer=opt
    ) as batches:
        for x_u8, y in batches:
            if len(y) == 0:
                continue
            x0 = to_unit(x_u8)
            b = len(y)
            t = torch.randint(0, num_t, (b,))
            noise = torch.randn_like(x0)
            y = torch.where(torch.rand(b) < s["class_dropout"], torch.full_like(y, null), y)
            ab = acp[t].view(-1, 1, 1, 1)
            x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * noise
            opt.zero_grad(set_to_none=True)
            loss = criterion(model(x_t, t, class_labels=y).sample, noise)
            loss.backward()
            opt.step()
            if not opt._is_last_step_skipped:
                steps += 1
                if steps % report_every == 0:
                    print(f"step {steps}/{len(loader)}", flush=True)
    epsilon = engine.get_epsilon(s["delta"])
    print(f"{steps} steps, epsilon spent ({a.accountant}): {epsilon:.3f}", flush=True)
    model.disable_hooks()
    if out:
        from safetensors.torch import save_file

        os.makedirs(out, exist_ok=True)
        state = {k: v.detach().contiguous() for k, v in unet.state_dict().items()}
        save_file(state, os.path.join(out, "model.safetensors"))
    # dpsynth's fine-tuning job ends with a preview grid: 10 images per class, DDPM 50 steps,
    # seed 0, one batch (its sampler's default 256)
    preview = generate(s, unet, 10, 50, 256, 0, quiet=True)
    if out:
        write_grid(*preview, os.path.join(out, "finetune-grid.png"))
    return unet, {
        "accountant": a.accountant,
        "noise_multiplier": sigma,
        "sample_rate": q,
        "steps": steps,
        "epsilon_spent": epsilon,
        "trainable_parameters": trainable,
        "adapted_convs": adapted,
    }


@torch.no_grad()
def generate(s, unet, per_class, steps, batch, seed, quiet=False):
    """`per_class` images of each class (class-major), DDPM with `steps` leading-spaced steps,
    conditional only (guidance 1), `batch` images per forward; returns (uint8 images, labels)."""
    from diffusers import DDPMScheduler

    sched = DDPMScheduler.from_pretrained(s["base"])
    sched.set_timesteps(steps)
    unet.eval()
    classes = unet.config.num_class_embeds - 1
    size, ch = unet.config.sample_size, unet.config.in_channels
    labels = torch.arange(classes).repeat_interleave(per_class)
    gen = torch.Generator().manual_seed(seed)
    out = []
    for y in labels.split(batch):
        x = torch.randn(len(y), ch, size, size, generator=gen)
        for t in sched.timesteps:
            eps = unet(x, torch.full((len(y),), int(t)), class_labels=y).sample
            x = sched.step(eps, t, x, generator=gen).prev_sample
        out.append(to_bytes(x))
        if not quiet:
            print(f"{sum(len(o) for o in out)}/{len(labels)} images", flush=True)
    return torch.cat(out), labels


def sample(s, unet):
    """The run's synthetic set: DDPM with 10 steps, batches of 250."""
    return generate(s, unet, s["per_class"], s["sample_steps"], s["sample_batch"], s["seed"])


def write_grid(images, labels, path, per_row=10, scale=2, gap=2):
    """dpsynth's grid.png: one row per class, up to `per_row` images each, scaled by `scale`
    (nearest), 2-pixel white gaps, RGB."""
    from PIL import Image

    classes = int(labels.max()) + 1
    side = images.shape[-1] * scale
    grid = Image.new("RGB", (gap + per_row * (side + gap), gap + classes * (side + gap)), "white")
    filled = [0] * classes
    arr = images.numpy()
    for i, c in enumerate(labels.tolist()):
        if filled[c] < per_row:
            tile = Image.fromarray(arr[i, 0]).resize((side, side), Image.NEAREST).convert("RGB")
            grid.paste(tile, (gap + filled[c] * (side + gap), gap + c * (side + gap)))
            filled[c] += 1
    grid.save(path)


def write_samples(images, labels, out):
    """The samples as an ImageFolder of PNG files and their grid.png, as dpsynth writes
    OUT/samples and OUT/grid.png."""
    from PIL import Image

    root = os.path.join(out, "samples")
    for c in labels.unique().tolist():
        os.makedirs(os.path.join(root, str(c)), exist_ok=True)
    arr = images.numpy()
    for i, c in enumerate(labels.tolist()):
        Image.fromarray(arr[i, 0]).save(os.path.join(root, str(c), f"{i:05}.png"))
    write_grid(images, labels, os.path.join(out, "grid.png"))


@torch.no_grad()
def accuracy(net, x_u8, y):
    correct = 0
    for xs, ys in zip(x_u8.split(1000), y.split(1000)):
        correct += (net(to_unit(xs)).argmax(-1) == ys).sum().item()
    return correct / max(1, len(y))


def evaluate(s, images, labels, test_x, test_y):
    """dpsynth's downstream recipe for the CNN; returns a dict of results."""
    torch.manual_seed(s["eval_seed"])
    n = len(labels)
    perm = torch.randperm(n)
    n_val = min(math.floor(n * s["val_fraction"] + 0.5), n - 1)  # Rust's round: half away from 0
    val, train = perm[:n_val], perm[n_val:]
    net = Net()
    opt = torch.optim.SGD(net.parameters(), lr=s["eval_lr"], momentum=s["eval_momentum"])
    best, val_acc = None, []
    for epoch in range(1, s["eval_epochs"] + 1):
        for chunk in train[torch.randperm(len(train))].split(s["eval_batch"]):
            loss = F.cross_entropy(net(to_unit(images[chunk])), labels[chunk])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        acc = accuracy(net, images[val], labels[val]) if n_val else 0.0
        val_acc.append(acc)
        print(f"epoch {epoch}: held-out synthetic accuracy {100 * acc:.2f}%", flush=True)
        if best is None or acc > best[0]:
            best = (acc, epoch, {k: v.detach().clone() for k, v in net.state_dict().items()})
    net.load_state_dict(best[2])
    return {
        "test_accuracy": accuracy(net, test_x, test_y),
        "downstream_best_epoch": best[1],
        "downstream_val_accuracy": val_acc,
        "train_examples": len(train),
        "val_examples": n_val,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--json", default=None, help="write the result here")
    ap.add_argument("--out", default=None, help="write the model and the PNG samples here")
    ap.add_argument("--accountant", choices=["prv", "rdp"], default="prv")
    ap.add_argument("--config", default=None, help="a run config (default: dpsynth's default)")
    ap.add_argument("--data", default=os.path.join(ROOT, "data", "mnist"))
    a = ap.parse_args()
    import_secs = time.perf_counter() - _T_IMPORT
    if a.threads:
        torch.set_num_threads(a.threads)
    s = run_settings(a.scale, *([a.config] if a.config else []))
    if a.out and os.path.exists(os.path.join(a.out, "samples")):
        sys.exit(f"{a.out}/samples exists: choose another --out")
    import diffusers
    import opacus

    print(
        f"PyTorch {torch.__version__}, Opacus {opacus.__version__}, diffusers "
        f"{diffusers.__version__}; {torch.get_num_threads()} threads; scale {a.scale}: "
        f"{s['private_n']} private images, batch {s['batch']} (physical {s['physical_batch']}), "
        f"{s['per_class']} images per class",
        flush=True,
    )

    st = Stages()
    start, cpu0 = time.perf_counter(), time.process_time()

    def load():
        train_x, train_y = load_mnist(a.data, "train")
        if s["private_n"] < len(train_y):
            idx = balanced_subset(train_y, s["private_n"])
            train_x, train_y = train_x[idx], train_y[idx]
        return (train_x, train_y), load_mnist(a.data, "t10k")

    (train_x, train_y), (test_x, test_y) = st.run("load", load)
    unet, ft = st.run("finetune", finetune, a, s, train_x, train_y, a.out)
    images, labels = st.run("sample", sample, s, unet)
    if a.out:
        st.run("write", write_samples, images, labels, a.out)
    ev = st.run("evaluate", evaluate, s, images, labels, test_x, test_y)
    st.wall["total"] = time.perf_counter() - start
    st.cpu["total"] = time.process_time() - cpu0
    st.wall["import"] = import_secs  # Python's imports, before `start`: not in total
    print(f"test accuracy on mnist:test: {100 * ev['test_accuracy']:.2f}%")
    print(
        "seconds: "
        + ", ".join(f"{k} {v:.1f}" for k, v in st.wall.items())
        + f" (CPU total {st.cpu['total']:.1f})"
    )
    result = {
        "impl": "pytorch+opacus+diffusers",
        "versions": {
            "torch": torch.__version__,
            "opacus": opacus.__version__,
            "diffusers": diffusers.__version__,
            "python": platform.python_version(),
        },
        "threads": torch.get_num_threads(),
        "scale": a.scale,
        "settings": s,
        "private_examples": len(train_y),
        "synthetic_images": len(labels),
        **ft,
        "delta": s["delta"],
        **ev,
        "seconds": st.wall,
        "cpu_seconds": st.cpu,
    }
    if a.json:
        os.makedirs(os.path.dirname(os.path.abspath(a.json)), exist_ok=True)
        with open(a.json, "w") as f:
            json.dump(result, f, indent=2)
        print(f"wrote {a.json}")


if __name__ == "__main__":
    main()
