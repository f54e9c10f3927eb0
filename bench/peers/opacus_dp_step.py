"""Peer benchmark: the classifier CNN's training step in PyTorch, non-private and with Opacus.

The architecture, batch and optimizer mirror `bench/dp_step.rs` (dpsynth's `ClassifierConfig::mnist`:
conv 16 8x8/2 pad 3 -> GroupNorm(4) -> tanh -> maxpool 2/1 -> conv 32 4x4/2 -> GroupNorm(4) ->
tanh -> maxpool 2/1 -> linear 512->32 -> tanh -> linear 32->10; batch 256 of 1x28x28; SGD lr 0.01;
clip 1.0, noise multiplier 1.0). Each step kind is timed in this process, interleaved rep by rep,
as the median wall-clock and process-CPU time; peak memory (VmHWM) comes from child processes that
only do one kind of step, like the Rust benchmark.

    python bench/peers/opacus_dp_step.py [--threads N] [--reps 50] [--modes hooks,ghost]
"""

import argparse
import json
import statistics
import subprocess
import sys
import time
import warnings

import torch
import torch.nn as nn
import torch.nn.functional as F

warnings.filterwarnings("ignore")


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 8, 2, padding=3)
        self.gn1 = nn.GroupNorm(4, 16)
        self.conv2 = nn.Conv2d(16, 32, 4, 2)
        self.gn2 = nn.GroupNorm(4, 32)
        self.fc1 = nn.Linear(32 * 4 * 4, 32)
        self.fc2 = nn.Linear(32, 10)

    def forward(self, x):
        x = F.max_pool2d(torch.tanh(self.gn1(self.conv1(x))), 2, 1)
        x = F.max_pool2d(torch.tanh(self.gn2(self.conv2(x))), 2, 1)
        x = torch.tanh(self.fc1(x.flatten(1)))
        return self.fc2(x)


def make_step(kind, batch):
    """Returns a closure doing one training step of `kind` (nonprivate, hooks, ghost)."""
    torch.manual_seed(0)
    x = torch.randn(batch, 1, 28, 28)
    y = torch.randint(0, 10, (batch,))
    model = Net()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    criterion = nn.CrossEntropyLoss()
    if kind != "nonprivate":
        from opacus import PrivacyEngine

        loader = torch.utils.data.DataLoader(
            torch.utils.data.TensorDataset(x, y), batch_size=batch
        )
        engine = PrivacyEngine(accountant="rdp")
        extra = {"criterion": criterion} if kind == "ghost" else {}
        out = engine.make_private(
            module=model,
            optimizer=opt,
            data_loader=loader,
            noise_multiplier=1.0,
            max_grad_norm=1.0,
            poisson_sampling=False,
            grad_sample_mode=kind,
            **extra,
        )
        if kind == "ghost":
            model, opt, criterion, _ = out
        else:
            model, opt, _ = out

    def step():
        opt.zero_grad(set_to_none=True)
        loss = criterion(model(x), y)
        loss.backward()
        opt.step()

    return step


def vm_hwm_mib():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    raise RuntimeError("no VmHWM")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--reps", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--modes", default="hooks,ghost")
    ap.add_argument("--peak", default=None, help="child mode: setup or a step kind")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)

    if a.peak:
        if a.peak == "setup":
            make_step("nonprivate", a.batch)
        else:
            step = make_step(a.peak, a.batch)
            for _ in range(max(a.warmup, 3)):
                step()
        print(f"vmhwm_mib={vm_hwm_mib():.1f}")
        return

    kinds = ["nonprivate"] + [m for m in a.modes.split(",") if m]
    steps = {}
    for k in kinds:
        try:
            steps[k] = make_step(k, a.batch)
            for _ in range(a.warmup):
                steps[k]()
        except Exception as e:  # a mode this Opacus version cannot run
            print(f"{k}: unavailable ({type(e).__name__}: {e})", file=sys.stderr)
            steps.pop(k, None)
    wall = {k: [] for k in steps}
    cpu = {k: [] for k in steps}
    for _ in range(a.reps):
        for k, step in steps.items():
            t, c = time.perf_counter(), time.process_time()
            step()
            wall[k].append((time.perf_counter() - t) * 1e3)
            cpu[k].append((time.process_time() - c) * 1e3)

    def peak(kind):
        cmd = [sys.executable, __file__, "--peak", kind, "--batch", str(a.batch)]
        cmd += ["--threads", str(torch.get_num_threads())]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        return float(out.strip().split("=")[1])

    import opacus

    setup = peak("setup")
    print(
        f"PyTorch {torch.__version__}, Opacus {opacus.__version__}, batch {a.batch} x 1x28x28, "
        f"f32, CPU, {torch.get_num_threads()} threads, {a.reps} reps (median)"
    )
    print("                  wall ms    CPU ms   VmHWM MiB")
    result = {"impl": "pytorch/opacus", "batch": a.batch, "threads": torch.get_num_threads()}
    base_wall = statistics.median(wall["nonprivate"])
    base_cpu = statistics.median(cpu["nonprivate"])
    for k in steps:
        w, c, m = statistics.median(wall[k]), statistics.median(cpu[k]), peak(k)
        print(
            f"{k:<16} {w:9.2f} {c:9.2f} {m:9.1f} (+{m - setup:.1f})"
            f"   ratio to non-private: wall {w / base_wall:.3f}, CPU {c / base_cpu:.3f}"
        )
        result[k] = {"wall_ms": w, "cpu_ms": c, "vmhwm_mib": m}
    result["vmhwm_setup_mib"] = setup
    print(json.dumps(result))


if __name__ == "__main__":
    main()
