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
import warnings

import torch
import torch.nn as nn
import torch.nn.functional as F
from peer_harness import build_steps, child_peak, make_private, time_interleaved, vm_hwm_mib

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
        model, opt, criterion = make_private(model, opt, criterion, x, y, kind)

    def step():
        opt.zero_grad(set_to_none=True)
        loss = criterion(model(x), y)
        loss.backward()
        opt.step()

    return step


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
    steps = build_steps(kinds, lambda k: make_step(k, a.batch), a.warmup)
    wall, cpu = time_interleaved(steps, a.reps)

    def peak(kind):
        return child_peak(__file__, kind, ["--batch", a.batch, "--threads", torch.get_num_threads()])

    import opacus

    setup = peak("setup")
    print(
        f"PyTorch {torch.__version__}, Opacus {opacus.__version__}, batch {a.batch} x 1x28x28, "
        f"f32, CPU, {torch.get_num_threads()} threads, {a.reps} reps (median)"
    )
    print("                  wall ms    CPU ms   VmHWM MiB")
    result = {"impl": "pytorch/opacus", "batch": a.batch, "threads": torch.get_num_threads()}
    base_wall, base_cpu = wall["nonprivate"], cpu["nonprivate"]
    for k in steps:
        w, c, m = wall[k], cpu[k], peak(k)
        print(
            f"{k:<16} {w:9.2f} {c:9.2f} {m:9.1f} (+{m - setup:.1f})"
            f"   ratio to non-private: wall {w / base_wall:.3f}, CPU {c / base_cpu:.3f}"
        )
        result[k] = {"wall_ms": w, "cpu_ms": c, "vmhwm_mib": m}
    result["vmhwm_setup_mib"] = setup
    print(json.dumps(result))


if __name__ == "__main__":
    main()
