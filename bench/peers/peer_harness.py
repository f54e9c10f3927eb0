"""What the PyTorch/Opacus peer benchmarks share: Opacus set-up, interleaved timing, peak memory.

Imported by the peer scripts beside it (run them as `python bench/peers/NAME.py`, so this folder
is on the import path).
"""

import statistics
import subprocess
import sys
import time


def make_private(model, opt, criterion, x, y, kind):
    """Wraps (model, optimizer, criterion) with Opacus in `kind` mode (hooks or ghost), clip 1.0,
    noise multiplier 1.0, one fixed batch (x, y) without Poisson sampling; returns the three."""
    import torch
    from opacus import PrivacyEngine

    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=len(x))
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
    return model, opt, criterion


def vm_hwm_mib():
    """This process's peak resident set (VmHWM), MiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    raise RuntimeError("no VmHWM")


def build_steps(kinds, make, warmup):
    """Calls `make(kind)` for each kind and warms the step up; a kind that fails (a mode this
    Opacus version cannot run) is reported and dropped. Returns {kind: step}."""
    steps = {}
    for k in kinds:
        try:
            steps[k] = make(k)
            for _ in range(warmup):
                steps[k]()
        except Exception as e:
            print(f"{k}: unavailable ({type(e).__name__}: {e})", file=sys.stderr)
            steps.pop(k, None)
    return steps


def time_interleaved(steps, reps):
    """Runs every step once per rep, in turn; returns the median wall and CPU ms per kind."""
    wall = {k: [] for k in steps}
    cpu = {k: [] for k in steps}
    for _ in range(reps):
        for k, step in steps.items():
            t, c = time.perf_counter(), time.process_time()
            step()
            wall[k].append((time.perf_counter() - t) * 1e3)
            cpu[k].append((time.process_time() - c) * 1e3)
    return (
        {k: statistics.median(v) for k, v in wall.items()},
        {k: statistics.median(v) for k, v in cpu.items()},
    )


def child_peak(script, kind, args):
    """Peak memory (MiB) of a child running `script --peak KIND ARGS...`, which prints
    `vmhwm_mib=X` as its last line."""
    cmd = [sys.executable, script, "--peak", kind] + [str(x) for x in args]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return float(out.strip().splitlines()[-1].split("=")[1])
