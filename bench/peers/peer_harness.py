"""What the PyTorch/Opacus peer benchmarks share: Opacus set-up, interleaved timing, peak memory,
and the settings of dpsynth's default run (for `peer_pipeline.py` and `pipeline_vs_peer.py`).

Imported by the peer scripts beside it (run them as `python bench/peers/NAME.py`, so this folder
is on the import path). Only the standard library is imported at module level, so that the
wrapper `pipeline_vs_peer.py` runs with any Python 3.11.
"""

import os
import statistics
import subprocess
import sys
import time
import tomllib

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
RUN_DEFAULT = os.path.join(ROOT, "configs", "run-default.toml")
MNIST_TRAIN = 60000  # images in mnist:train

# What the default run uses that its config does not spell out: dpsynth's library defaults
# (FinetuneConfig::new, the `run` command's sampler batch, DownstreamConfig::default).
RECIPE = {
    "class_dropout": 0.1,
    "adam_betas": (0.9, 0.999),
    "adam_eps": 1e-8,
    "sample_batch": 250,
    "eval_batch": 128,
    "eval_lr": 0.05,
    "eval_momentum": 0.9,
    "eval_seed": 0,
}


# What an omitted [finetune] key means to dpsynth in mode "loda": the library defaults of
# FinetuneConfig::new (crates/dpsynth/src/train/finetune.rs: rank 4 of AdapterConfig::new, 1
# epoch, batch 1000, physical batch 250, noise multiplicity 1) and Mode::Loda's default_lr and
# default_clip.
LODA_DEFAULTS = {
    "rank": 4,
    "epochs": 1.0,
    "batch": 1000,
    "physical_batch": 250,
    "lr": 3e-3,
    "clip": 0.003,
    "noise_multiplicity": 1,
}

# The keys of each table the peer reproduces (or that change nothing it measures: private_log
# only shows the loss in dpsynth's progress lines), and keys it accepts only at a value that
# changes nothing (dpsynth's default). Any other key is refused, such as [finetune] class_lr,
# class_init, allow_large_delta = true, [sample] eta and [evaluate] inception, fid_images.
REPRODUCED = {
    None: {"out", "private", "finetune", "sample", "evaluate"},
    "private": {"train", "test"},
    "finetune": {"base", "mode", "epsilon", "delta", "private_log", *LODA_DEFAULTS},
    "sample": {"per_class", "steps", "guidance", "seed", "sampler", "precision"},
    "evaluate": {"epochs", "val_fraction", "arch"},
}
NEUTRAL = {("finetune", "allow_large_delta"): False, ("sample", "eta"): 0.0}
REQUIRED = {
    "finetune": ("base", "mode", "epsilon", "delta"),
    "sample": ("per_class", "steps", "guidance", "seed"),
    "evaluate": ("epochs", "val_fraction"),
}


def _toml(v):
    """`v` as TOML writes it (true, "text", 0.5)."""
    return str(v).lower() if isinstance(v, bool) else f'"{v}"' if isinstance(v, str) else repr(v)


def _refuse(ok, config, msg):
    if not ok:
        raise ValueError(f"{config}: {msg}")


def run_settings(scale=1.0, config=RUN_DEFAULT):
    """The settings of the default run (`config`, dpsynth's `configs/run-default.toml`), flat,
    with the private set and the images per class shrunk by `scale` for a quick check: the
    private set becomes round(60 scale) whole expected batches (at least one), so that every
    step is the full run's size and q = batch / N is also Opacus's 1 / len(loader); the images
    per class become round(per_class scale). A [finetune] key left out takes dpsynth's default
    (LODA_DEFAULTS). Refuses (ValueError) a config the peer does not reproduce."""
    with open(config, "rb") as f:
        c = tomllib.load(f)
    for table, keys in REPRODUCED.items():
        t = c if table is None else c.get(table, {})
        where = f"[{table}] " if table else ""
        for key, value in t.items():
            if key in keys:
                continue
            neutral = NEUTRAL.get((table, key))
            _refuse(
                neutral is not None and value == neutral,
                config,
                f"{where}{key} = {_toml(value)}: the peer does not reproduce it"
                + (f" (only {_toml(neutral)}, dpsynth's default)" if neutral is not None else ""),
            )
        for key in REQUIRED.get(table, ()):
            _refuse(key in t, config, f"{where}{key} is missing (dpsynth requires it)")
    ft = {**LODA_DEFAULTS, **c["finetune"]}
    sa, ev = c["sample"], c["evaluate"]
    _refuse(
        c.get("private") == {"train": "mnist:train", "test": "mnist:test"},
        config,
        f"[private] is {c.get('private')}, not MNIST's train and test sets",
    )
    _refuse(ft["mode"] == "loda", config, f"[finetune] mode = {ft['mode']!r}, not \"loda\"")
    _refuse(
        ft["noise_multiplicity"] == 1,
        config,
        f"[finetune] noise_multiplicity = {ft['noise_multiplicity']}, not 1",
    )
    _refuse(
        sa.get("sampler", "ddpm") == "ddpm",
        config,
        f"[sample] sampler = {sa.get('sampler')!r}, not \"ddpm\"",
    )
    _refuse(sa["guidance"] == 1.0, config, f"[sample] guidance = {sa['guidance']}, not 1.0")
    _refuse(
        sa.get("precision", "float32") == "float32",
        config,
        f"[sample] precision = {sa.get('precision')!r}: the peer samples in float32",
    )
    _refuse(
        ev.get("arch", "auto") in ("auto", "cnn"),
        config,
        f"[evaluate] arch = {ev.get('arch')!r}, not \"auto\" or \"cnn\"",
    )
    _refuse(
        float(ft["epochs"]).is_integer(),
        config,
        f"[finetune] epochs = {ft['epochs']}: Opacus takes whole epochs",
    )
    s = {
        "base": os.path.join(ROOT, ft["base"]),
        "private_n": MNIST_TRAIN,
        "epsilon": ft["epsilon"],
        "delta": ft["delta"],
        "rank": ft["rank"],
        "epochs": int(ft["epochs"]),
        "batch": ft["batch"],
        "physical_batch": ft["physical_batch"],
        "lr": ft["lr"],
        "clip": ft["clip"],
        "per_class": sa["per_class"],
        "sample_steps": sa["steps"],
        "seed": sa["seed"],
        "eval_epochs": ev["epochs"],
        "val_fraction": ev["val_fraction"],
        **RECIPE,
    }
    if scale != 1.0:
        assert 0 < scale < 1, f"scale must be in (0, 1], got {scale}"
        s["private_n"] = max(1, round(MNIST_TRAIN * scale / s["batch"])) * s["batch"]
        s["per_class"] = max(1, round(s["per_class"] * scale))
    return s


def scaled_config_text(scale, config=RUN_DEFAULT):
    """`config`'s text with the private set and images per class of `run_settings(scale)`: the
    same shrunk run for `dpsynth run --config` (the private set as dpsynth's class-balanced
    `mnist:train@N` subset), sampling in float32 as the peer does (`precision = "float32"`;
    dpsynth's default, "auto", samples in bfloat16 on CPUs with AVX512-BF16)."""
    s = run_settings(scale, config)
    with open(config) as f:
        text = f.read()
    out = []
    for line in text.splitlines():
        key = line.split("=")[0].strip()
        if key == "train" and s["private_n"] < MNIST_TRAIN:
            line = f'train = "mnist:train@{s["private_n"]}"'
        elif key == "precision":
            continue
        elif key == "per_class":
            line = f'per_class = {s["per_class"]}\nprecision = "float32"'
        out.append(line)
    return "\n".join(out) + "\n"


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
