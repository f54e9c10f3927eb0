#!/usr/bin/env python3
"""Downstream accuracy against the number of model evaluations, for each sampler.

For every sampler (DDPM, DDIM with eta 0, DPM-Solver++ 2M), guidance scale, step count and seed,
samples `--per-class` images per class from one model folder with `dpsynth sample`, trains the
downstream classifier on them with `dpsynth evaluate` and tests it on `--test`. Prints a table
of test accuracy (mean ± sd over the seeds) and sampling throughput (images per second) per
point and writes every run to OUT/curve.json. A step is one model evaluation (NFE) at guidance 1
and two above it (the conditional and the unconditional prediction).

    python3 bench/sampler_curve.py --model DIR [--test optdigits:all] [--per-class 1000]
        [--samplers ddpm,ddim,dpm] [--steps 5,10,20,50] [--guidance 1] [--seeds 0]
        [--precision auto|float32|bfloat16] [--threads 1] [--out DIR]

The default run's sampler and steps are chosen from this curve on a public stand-in: a model
that read no private image (for example the stand-in cell's fine-tuned model,
`run --config results/handwriting-digits/standin-loda-eps10-lr3e-2/config.toml` then
OUT/finetune/model) scored on a public test set (`optdigits:all`), never on MNIST.

A finished run (its evaluate report exists) is kept, so an interrupted curve resumes. Seed s is
both the sampling seed and the classifier's seed, the same at every point: within a seed the
points differ only in the sampler, its steps and the guidance; the seeds give the spread.
dpsynth is `$DPSYNTH`, else target/release/dpsynth. Standard library only; run from anywhere.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(cmd, log):
    """Runs `cmd` from the repository root with its output in `log`; exits on failure."""
    print("$ " + " ".join(cmd), flush=True)
    with open(log, "w") as f:
        code = subprocess.call(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT)
    if code != 0:
        with open(log) as f:
            tail = f.read()[-3000:]
        sys.exit(f"{cmd[0]} failed ({code}); the end of {log}:\n{tail}")


def point(args, dpsynth, sampler, guidance, steps, seed):
    """Samples and evaluates one (sampler, guidance, steps, seed) run unless its report exists;
    returns it."""
    folder = os.path.join(args.out, f"{sampler}-g{guidance:g}-{steps}-s{seed}")
    report = os.path.join(folder, "evaluate", "report.json")
    if not os.path.exists(report):
        samples = os.path.join(folder, "samples")
        # A point interrupted while sampling left a partial folder; `sample` refuses one.
        shutil.rmtree(samples, ignore_errors=True)
        os.makedirs(folder, exist_ok=True)
        common = [dpsynth, "--threads", str(args.threads), "--data-dir", args.data_dir]
        run(
            common
            + ["sample", "--model", args.model, "--per-class", str(args.per_class)]
            + ["--sampler", sampler, "--steps", str(steps), "--guidance", f"{guidance:g}"]
            + ["--precision", args.precision, "--seed", str(seed)]
            + ["--out", samples],
            os.path.join(folder, "sample.log"),
        )
        run(
            common
            + ["evaluate", "--train", "imagefolder:" + os.path.join(samples, "images")]
            + ["--test", args.test, "--epochs", str(args.epochs), "--seed", str(seed)]
            + ["--out", os.path.join(folder, "evaluate")],
            os.path.join(folder, "evaluate.log"),
        )
    with open(report) as f:
        accuracy = json.load(f)["test_accuracy"]
    with open(os.path.join(folder, "samples", "report.json")) as f:
        sampled = json.load(f)
    return {
        "sampler": sampler,
        "guidance": guidance,
        "steps": steps,
        "seed": seed,
        "nfe": steps * (1 if guidance == 1 else 2),
        "precision": sampled["sampler"].get("precision", "float32"),
        "test_accuracy": accuracy,
        "images_per_second": sampled["images_per_second"],
    }


def mean_sd(values):
    """'m%' for one value, 'm% ± sd' (sample standard deviation) for more, in percent."""
    m = sum(values) / len(values)
    if len(values) == 1:
        return f"{100 * m:.2f}%"
    sd = (sum((v - m) ** 2 for v in values) / (len(values) - 1)) ** 0.5
    return f"{100 * m:.2f}% ± {100 * sd:.2f}"


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="model folder to sample from")
    p.add_argument("--test", default="optdigits:all", help="real test set (a public one)")
    p.add_argument("--per-class", type=int, default=1000, help="images sampled per class")
    p.add_argument("--samplers", default="ddpm,ddim,dpm", help="comma-separated samplers")
    p.add_argument("--steps", default="5,10,20,50", help="comma-separated step counts")
    p.add_argument("--guidance", default="1", help="comma-separated guidance scales")
    p.add_argument("--seeds", default="0", help="comma-separated seeds (sampling and classifier)")
    p.add_argument(
        "--precision",
        default="auto",
        choices=("auto", "float32", "bfloat16"),
        help="the model's number format while sampling (dpsynth sample --precision)",
    )
    p.add_argument("--epochs", type=int, default=15, help="downstream classifier epochs")
    p.add_argument("--threads", type=int, default=1, help="libtorch threads")
    p.add_argument("--data-dir", default="data", help="folder holding fetched datasets")
    p.add_argument("--out", default="out/sampler-curve", help="output folder")
    args = p.parse_args()
    try:
        steps = [int(s) for s in args.steps.split(",")]
    except ValueError:
        sys.exit(f"--steps: expected comma-separated integers, got {args.steps!r}")
    try:
        guidances = [float(g) for g in args.guidance.split(",")]
    except ValueError:
        sys.exit(f"--guidance: expected comma-separated numbers, got {args.guidance!r}")
    try:
        seeds = [int(s) for s in args.seeds.split(",")]
    except ValueError:
        sys.exit(f"--seeds: expected comma-separated integers, got {args.seeds!r}")
    samplers = args.samplers.split(",")
    for s in samplers:
        if s not in ("ddpm", "ddim", "dpm"):
            sys.exit(f"--samplers: unknown sampler {s!r} (ddpm, ddim or dpm)")
    dpsynth = os.environ.get("DPSYNTH") or os.path.join(ROOT, "target", "release", "dpsynth")
    if not os.path.exists(dpsynth):
        sys.exit(f"{dpsynth} not found: build it (cargo build --release -p dpsynth-cli)")
    for path in ("model", "out", "data_dir"):
        setattr(args, path, os.path.abspath(getattr(args, path)))
    os.makedirs(args.out, exist_ok=True)

    started = time.time()
    points = [
        point(args, dpsynth, s, g, n, seed)
        for s in samplers
        for g in guidances
        for n in steps
        for seed in seeds
    ]
    curve = {
        "model": args.model,
        "test": args.test,
        "per_class": args.per_class,
        "seeds": seeds,
        "threads": args.threads,
        "points": points,
    }
    with open(os.path.join(args.out, "curve.json"), "w") as f:
        json.dump(curve, f, indent=2)

    print(
        f"\nmodel {args.model}, test {args.test}, {args.per_class} images per class, "
        f"seeds {args.seeds}"
    )
    print("| sampler | guidance | " + " | ".join(f"{n} steps" for n in steps) + " |")
    print("|---|---:|" + "---:|" * len(steps))
    for s in samplers:
        for g in guidances:
            cells = []
            for n in steps:
                runs = [q for q in points if (q["sampler"], q["guidance"], q["steps"]) == (s, g, n)]
                rate = sum(q["images_per_second"] for q in runs) / len(runs)
                cells.append(f"{mean_sd([q['test_accuracy'] for q in runs])} ({rate:.0f}/s)")
            print(f"| {s} | {g:g} | " + " | ".join(cells) + " |")
    print(f"\n{os.path.join(args.out, 'curve.json')} ({time.time() - started:.0f} s)")


if __name__ == "__main__":
    main()
