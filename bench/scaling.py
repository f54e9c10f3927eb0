#!/usr/bin/env python3
"""How cost grows: step time and peak memory against batch size, model size and image size, and
sampling time against the number of steps, for dpsynth and its PyTorch peers.

What is measured (U-Net configs in bench/scaling/, all of the shipped base's layout: DownBlock2D,
DownBlock2D, AttnDownBlock2D, one ResNet layer per block, 11 class embeddings, random weights):

- train: a non-private training step (ε-prediction loss, class dropout 0.1, backward, AdamW) of
  the whole U-Net on random data: dpsynth's `bench_unet --train-iters N` against
  `peers/diffusers_unet.py` (PyTorch + diffusers); mean of N steps after 2 warm-up steps;
- dp-loda: a DP-SGD step of LoDA fine-tuning (rank 4 on every ResNet conv, class embedding
  trained, per-example clipping to 1, noise σ = 1): `bench_unet --dp-iters N` (mean of N steps
  after 1 warm-up step, no optimizer) against `peers/opacus_unet_loda.py --config ... --only hooks`
  (Opacus hooks, Adam; median of N steps after 1 warm-up step);
- sample: DDIM with classifier-free guidance 3 (one forward of 2B rows per step), seconds per
  image: `bench_unet --sample-steps S` against `peers/diffusers_unet.py --sample-steps S`, after
  a 2-step warm-up.

The grid: batch 16, 32, 64, 128 on the MNIST-size model (c16-28x28x1.json, the shipped base's
config: 16/32/64 channels, 28×28×1, 0.69M parameters); model sizes 0.69M, 2.7M and 10.9M
parameters at 32×32×3 (16/32/64, 32/64/128 and 64/128/256 channels) at batch 64; image sizes
28×28×1, 32×32×3 and 64×64×3 (16/32/64 channels) at batch 64; sampling at 5, 10, 20 and 50
steps on the MNIST-size model. Points shared by two axes are measured once.

Every measurement runs in its own child process, one at a time; the driver takes the child's
peak resident set (ru_maxrss) from `os.wait4`, and subtracts the peak of a child of the same
program that only builds the model ("setup"; the peer's includes the ~0.7 GiB of CUDA libraries
its torch build loads), so the plotted memory is what the step itself adds. Times are the
programs' own (wall clock and process CPU around the timed steps, start-up excluded).

Writes OUT/scaling.json (every figure, after each measurement, with the load average before and
after: measure on an otherwise idle machine) and OUT/scaling.svg (small multiples, one column
per axis, time above and memory below, log axes); a full run (not `--quick`) also writes
bench/scaling.svg.

    python3 bench/scaling.py [--threads 1] [--out out/scaling] [--quick]
        [--dpsynth PATH] [--python PATH] [--axes batch,model,image,steps] [--iters 10]
        [--sample-batch 64] [--plot-only]

`--dpsynth`: the bench_unet binary (default `$DPSYNTH`, else target/release/examples/bench_unet;
build it with `cargo build --release -p dpsynth --example bench_unet` and run with libtorch on
the library path, e.g. after `eval "$(scripts/setup --print-env)"`). `--python`: the peers'
interpreter (default ~/.cache/dpsynth/venv-peers/bin/python, with torch, diffusers and Opacus;
see bench/README.md). `--quick`: one timed step each and 4 sampled images, a smoke test whose
figures mean nothing. `--plot-only`: redraw the SVG from OUT/scaling.json.
Standard library only; run from anywhere.
"""

import argparse
import datetime
import json
import math
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(ROOT, "bench", "scaling")
MNIST = "c16-28x28x1"
BATCHES = (16, 32, 64, 128)
MODELS = ("c16-32x32x3", "c32-32x32x3", "c64-32x32x3")
IMAGES = ("c16-28x28x1", "c16-32x32x3", "c16-64x64x3")
STEPS = (5, 10, 20, 50)
AXIS_BATCH = 64
GUIDANCE = 3.0
AXES = ("batch", "model", "image", "steps")

# (tool, kind): what runs it and under which name it is plotted
SERIES = {
    ("dpsynth", "train"): "dpsynth train",
    ("diffusers", "train"): "PyTorch + diffusers train",
    ("dpsynth", "dp-loda"): "dpsynth DP-LoDA",
    ("opacus", "dp-loda"): "Opacus (hooks) DP-LoDA",
    ("dpsynth", "sample"): "dpsynth DDIM",
    ("diffusers", "sample"): "diffusers DDIM",
}


def config_path(name):
    return os.path.join(CONFIGS, name + ".json")


def command(a, tool, kind, config, batch=0, steps=0):
    """The child's command line for one measurement (kind "setup": build the model only)."""
    cfg = config_path(config)
    threads = ["--threads", str(a.threads)]
    if tool == "opacus":
        cmd = [a.python, os.path.join(ROOT, "bench", "peers", "opacus_unet_loda.py")]
        cmd += ["--config", cfg, *threads, "--warmup", "1"]
        if kind == "setup":
            return cmd + ["--peak", "setup"]
        return cmd + ["--batch", str(batch), "--only", "hooks", "--reps", str(a.iters)]
    if tool == "dpsynth":
        cmd = [a.dpsynth]
    else:
        cmd = [a.python, os.path.join(ROOT, "bench", "peers", "diffusers_unet.py")]
    cmd += ["--config", cfg, "--json", *threads]
    train = kind == "train" or (kind == "dp-loda" and tool == "dpsynth")
    cmd += ["--train-batch", str(batch)] if train else []
    cmd += ["--train-iters", str(a.iters if kind == "train" else 0)]
    if kind == "sample":
        cmd += ["--sample-batch", str(a.sample_batch), "--sample-steps", str(steps)]
        cmd += ["--guidance", str(GUIDANCE)]
    else:
        cmd += ["--sample-batch", "0"]
    if tool == "dpsynth":
        cmd += ["--dp-iters", str(a.iters if kind == "dp-loda" else 0)]
    return cmd


def run_child(cmd, log):
    """Runs `cmd` from the repository root with its output in `log`; returns (exit code, wall
    s, CPU s, peak resident set MiB, the lines of its output)."""
    print("$ " + " ".join(os.path.relpath(c, ROOT) if c.startswith(ROOT) else c for c in cmd))
    sys.stdout.flush()
    with open(log, "w") as f:
        t = time.perf_counter()
        p = subprocess.Popen(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(p.pid, 0)
        wall = time.perf_counter() - t
    with open(log) as f:
        lines = f.read().strip().splitlines()
    code = os.waitstatus_to_exitcode(status)
    return code, wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024, lines


def figures(tool, kind, lines):
    """The figures of one child's JSON line: per step (train, dp-loda) or per image (sample)."""
    if tool == "opacus" and kind == "setup":
        return {}  # it prints its own VmHWM, which the driver does not use
    j = json.loads(lines[-1])
    if tool == "opacus":
        return {
            "trainable": j["trainable"],
            "wall_ms_per_step": j["hooks"]["wall_ms"],
            "cpu_ms_per_step": j["hooks"]["cpu_ms"],
        }
    out = {"params": j["params"]}
    if kind == "train":
        t = j["train"]
        out["wall_ms_per_step"] = 1e3 * t["wall_s"] / t["iters"]
        out["cpu_ms_per_step"] = 1e3 * t["cpu_s"] / t["iters"]
    elif kind == "dp-loda":
        t = j["dp_loda"]
        out["trainable"] = t["trainable"]
        out["wall_ms_per_step"] = 1e3 * t["wall_s"] / t["steps"]
        out["cpu_ms_per_step"] = 1e3 * t["cpu_s"] / t["steps"]
    elif kind == "sample":
        t = j["sample"]
        out["wall_s_per_image"] = t["wall_s"] / t["images"]
        out["cpu_s_per_image"] = t["cpu_s"] / t["images"]
    return out


def grid(axes):
    """The measurements the axes need, deduplicated: (tool, kind, config, batch, steps)."""
    points = []
    if "batch" in axes:
        points += [(MNIST, b) for b in BATCHES]
    if "model" in axes:
        points += [(c, AXIS_BATCH) for c in MODELS]
    if "image" in axes:
        points += [(c, AXIS_BATCH) for c in IMAGES]
    todo = []
    for tool, kind in SERIES:
        if kind != "sample":
            todo += [(tool, kind, c, b, 0) for c, b in points]
    if "steps" in axes:
        todo += [(tool, "sample", MNIST, 0, s) for tool in ("dpsynth", "diffusers") for s in STEPS]
    tools = ("dpsynth", "diffusers", "opacus")
    setups = [
        (t, "setup", c, 0, 0) for t in tools for c in sorted({m[2] for m in todo if m[0] == t})
    ]
    unique = []
    for m in setups + todo:
        if m not in unique:
            unique.append(m)
    return unique


def measure(a, out):
    """Runs the grid, writing OUT/scaling.json after each measurement; returns the document."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True,
                              text=True).stdout.strip()
    except OSError:
        head = None
    doc = {
        "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "commit": head,
        "cpu": cpu_model(),
        "cpus": os.cpu_count(),
        "threads": a.threads,
        "quick": a.quick,
        "iters": a.iters,
        "sample_batch": a.sample_batch,
        "guidance": GUIDANCE,
        "axes": a.axes,
        "dpsynth": a.dpsynth,
        "python": a.python,
        "loadavg_start": os.getloadavg(),
        "measurements": [],
    }
    if doc["loadavg_start"][0] > 0.5:
        print(f"note: load average {doc['loadavg_start'][0]:.2f}: the machine is not idle")
    todo = grid(a.axes)
    setup_peak = {}
    logs = os.path.join(out, "logs")
    os.makedirs(logs, exist_ok=True)
    for i, (tool, kind, config, batch, steps) in enumerate(todo, 1):
        name = f"{tool}-{kind}-{config}" + (f"-b{batch}" if batch else "")
        name += f"-s{steps}" if steps else ""
        print(f"[{i}/{len(todo)}] {name}")
        cmd = command(a, tool, kind, config, batch, steps)
        load = os.getloadavg()[0]
        code, wall, cpu, peak, lines = run_child(cmd, os.path.join(logs, name + ".log"))
        m = {
            "tool": tool,
            "kind": kind,
            "config": config,
            "batch": batch or None,
            "steps": steps or None,
            "child_wall_s": wall,
            "child_cpu_s": cpu,
            "peak_rss_mib": peak,
            "loadavg_before": load,
            "log": os.path.relpath(os.path.join(logs, name + ".log"), out),
        }
        try:
            if code != 0:
                raise RuntimeError(f"exit code {code}")
            m.update(figures(tool, kind, lines))
        except (RuntimeError, ValueError, KeyError, IndexError) as e:
            m["error"] = f"{type(e).__name__}: {e}; " + " | ".join(lines[-3:])
            print(f"  failed: {m['error']}")
        if kind == "setup":
            setup_peak[(tool, config)] = peak
        else:
            base = setup_peak.get((tool, config))
            m["setup_peak_rss_mib"] = base
            m["peak_rss_increment_mib"] = peak - base if base is not None else None
        shown = {k: v for k, v in m.items() if k in ("params", "wall_ms_per_step",
                                                     "wall_s_per_image", "peak_rss_mib",
                                                     "peak_rss_increment_mib")}
        print("  " + ", ".join(f"{k} {v:.4g}" for k, v in shown.items() if v is not None))
        doc["measurements"].append(m)
        doc["loadavg_end"] = os.getloadavg()
        write_json(os.path.join(out, "scaling.json"), doc)
    doc["finished"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    write_json(os.path.join(out, "scaling.json"), doc)
    return doc


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def write_json(path, doc):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(doc, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------
# The plot: hand-written SVG, small multiples.

COLOR = {"dpsynth": "#1f5fbf", "diffusers": "#d9641e", "opacus": "#d9641e"}
DASH = {"train": "", "sample": "", "dp-loda": "6,4"}
PANEL_W, PANEL_H = 250, 190
MARGIN_L, MARGIN_R, MARGIN_T, MARGIN_B = 62, 16, 30, 44


def esc(s):
    return str(s).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def fmt(v):
    """A tick label: 20, 1.5k, 0.05."""
    if v >= 1e3:
        return f"{v / 1e3:.3g}k"
    return f"{v:.3g}"


def log_ticks(lo, hi):
    """Ticks m·10^k in [lo, hi]: powers of ten, or 1-2-5, or finer, whichever gives 3 or more."""
    for mults in ((1,), (1, 2, 5), (1, 1.5, 2, 3, 4, 5, 6, 7, 8, 9)):
        ticks = []
        for k in range(math.floor(math.log10(lo)) - 1, math.ceil(math.log10(hi)) + 1):
            ticks += [m * 10**k for m in mults if lo <= m * 10**k <= hi]
        if len(ticks) >= 3:
            return ticks
    return ticks


def panel(x0, y0, title, xlabel, ylabel, series, xticks):
    """One panel at (x0, y0): `series` is [(tool, kind, [(x, y), ...])] on log-log axes; x ticks
    at `xticks` [(x, label)]. Returns SVG elements."""
    el = []
    pw = PANEL_W - MARGIN_L - MARGIN_R
    ph = PANEL_H - MARGIN_T - MARGIN_B
    left, top = x0 + MARGIN_L, y0 + MARGIN_T
    el.append(f'<text x="{x0 + PANEL_W / 2}" y="{y0 + 16}" text-anchor="middle" '
              f'font-weight="bold">{esc(title)}</text>')
    el.append(f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" '
              f'stroke="#999"/>')
    ys = [y for _, _, pts in series for _, y in pts if y is not None and y > 0]
    xs = [x for x, _ in xticks]
    if not ys or not xs:
        el.append(f'<text x="{left + pw / 2}" y="{top + ph / 2}" text-anchor="middle" '
                  f'fill="#999">no data</text>')
        return el
    ylo, yhi = min(ys), max(ys)
    if yhi / ylo < 4:  # at least a factor 4 in view, centred on the data
        mid = math.sqrt(ylo * yhi)
        ylo, yhi = mid / 2, mid * 2
    ylo, yhi = ylo / 1.15, yhi * 1.15
    xlo, xhi = min(xs), max(xs)
    if xhi == xlo:
        xlo, xhi = xlo / 2, xhi * 2
    pad = (math.log(xhi) - math.log(xlo)) * 0.08

    def px(x):
        return left + pw * (math.log(x) - math.log(xlo) + pad) / (
            math.log(xhi) - math.log(xlo) + 2 * pad)

    def py(y):
        return top + ph * (1 - (math.log(y) - math.log(ylo)) / (math.log(yhi) - math.log(ylo)))

    for t in log_ticks(ylo, yhi):
        y = py(t)
        el.append(f'<line x1="{left}" x2="{left + pw}" y1="{y:.1f}" y2="{y:.1f}" '
                  f'stroke="#e4e4e4"/>')
        el.append(f'<text x="{left - 4}" y="{y + 4:.1f}" text-anchor="end">{fmt(t)}</text>')
    for x, label in xticks:
        X = px(x)
        el.append(f'<line x1="{X:.1f}" x2="{X:.1f}" y1="{top}" y2="{top + ph}" '
                  f'stroke="#e4e4e4"/>')
        el.append(f'<text x="{X:.1f}" y="{top + ph + 14}" text-anchor="middle">'
                  f'{esc(label)}</text>')
    el.append(f'<text x="{left + pw / 2}" y="{top + ph + 32}" text-anchor="middle">'
              f'{esc(xlabel)}</text>')
    el.append(f'<text transform="translate({x0 + 14},{top + ph / 2}) rotate(-90)" '
              f'text-anchor="middle">{esc(ylabel)}</text>')
    for tool, kind, pts in series:
        pts = [(x, y) for x, y in pts if y is not None and y > 0]
        if not pts:
            continue
        path = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in pts)
        dash = f' stroke-dasharray="{DASH[kind]}"' if DASH[kind] else ""
        el.append(f'<polyline points="{path}" fill="none" stroke="{COLOR[tool]}" '
                  f'stroke-width="1.8"{dash}/>')
        for x, y in pts:
            marker = (f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="2.8" fill="{COLOR[tool]}"/>'
                      if kind != "dp-loda" else
                      f'<rect x="{px(x) - 2.8:.1f}" y="{py(y) - 2.8:.1f}" width="5.6" '
                      f'height="5.6" fill="white" stroke="{COLOR[tool]}" stroke-width="1.5"/>')
            el.append(marker)
    return el


def plot(doc, path):
    """Writes the small multiples of `doc` to `path`: columns batch, model size, image size,
    sampling steps; time in the top row, peak memory over setup in the bottom row."""
    ms = [m for m in doc["measurements"] if "error" not in m and m["kind"] != "setup"]

    def find(tool, kind, config, batch=None, steps=None):
        for m in ms:
            if (m["tool"], m["kind"], m["config"]) == (tool, kind, config) and \
                    m["batch"] == batch and m["steps"] == steps:
                return m
        return None

    params = {}
    for m in doc["measurements"]:
        if m.get("params"):
            params[m["config"]] = m["params"]
    side = {"c16-28x28x1": 28, "c16-32x32x3": 32, "c16-64x64x3": 64}
    step_series = [k for k in SERIES if k[1] != "sample"]
    columns = []
    # batch
    columns.append((
        "Batch size (0.69M, 28×28×1)", "batch size",
        [(b, str(b)) for b in BATCHES],
        lambda t, k: [(b, find(t, k, MNIST, b)) for b in BATCHES],
        step_series,
    ))
    columns.append((
        "Model size (32×32×3, batch 64)", "parameters",
        [(params[c], f"{params[c] / 1e6:.3g}M") for c in MODELS if c in params],
        lambda t, k: [(params.get(c), find(t, k, c, AXIS_BATCH)) for c in MODELS],
        step_series,
    ))
    columns.append((
        "Image size (0.69M, batch 64)", "image (28: 1 channel, else 3)",
        [(side[c], f"{side[c]}²") for c in IMAGES],
        lambda t, k: [(side[c], find(t, k, c, AXIS_BATCH)) for c in IMAGES],
        step_series,
    ))
    columns.append((
        f"Sampling (0.69M, 28×28×1, {doc['sample_batch']} images)", "DDIM steps",
        [(s, str(s)) for s in STEPS],
        lambda t, k: [(s, find(t, k, MNIST, None, s)) for s in STEPS],
        [k for k in SERIES if k[1] == "sample"],
    ))
    legend_h = 46
    width = PANEL_W * len(columns)
    height = legend_h + 2 * PANEL_H + 34
    el = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
          f'viewBox="0 0 {width} {height}" font-family="DejaVu Sans, Arial, sans-serif" '
          f'font-size="10.5">', f'<rect width="{width}" height="{height}" fill="white"/>']
    # legend
    x = 14
    for (tool, kind), label in SERIES.items():
        if kind == "sample":
            continue
        dash = f' stroke-dasharray="{DASH[kind]}"' if DASH[kind] else ""
        el.append(f'<line x1="{x}" x2="{x + 28}" y1="16" y2="16" stroke="{COLOR[tool]}" '
                  f'stroke-width="1.8"{dash}/>')
        el.append(f'<text x="{x + 34}" y="20">{esc(label)}</text>')
        x += 40 + 6.2 * len(label)
    el.append(f'<text x="14" y="38" fill="#555">sampling: dpsynth (blue) and diffusers '
              f'(orange) DDIM, guidance {doc["guidance"]:g}; {doc["threads"]} torch thread(s), '
              f'{esc(doc.get("cpu") or "CPU")}, commit {esc((doc.get("commit") or "?")[:10])}'
              f'</text>')
    if doc.get("quick"):
        el.append(f'<text x="{width - 14}" y="20" text-anchor="end" fill="#c00" '
                  f'font-weight="bold">--quick smoke run: the figures mean nothing</text>')
    for col, (title, xlabel, xticks, points, series) in enumerate(columns):
        x0 = col * PANEL_W
        sampling = series[0][1] == "sample"
        for row in range(2):
            y0 = legend_h + row * PANEL_H
            if row == 0:
                key, ylabel = (("wall_s_per_image", "seconds per image") if sampling
                               else ("wall_ms_per_step", "ms per step"))
            else:
                key, ylabel = "peak_rss_increment_mib", "peak RSS over setup, MiB"
            data = [(t, k, [(x, m.get(key) if m else None) for x, m in points(t, k)
                            if x is not None]) for t, k in series]
            el += panel(x0, y0, title if row == 0 else "", xlabel, ylabel, data, xticks)
    el.append(f'<text x="14" y="{height - 10}" fill="#555">Peak RSS: ru_maxrss of the child '
              f'process running only that measurement, less that of a child that only builds '
              f'the model. Log axes. {esc(doc.get("started", ""))}</text>')
    el.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(el) + "\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=os.path.join(ROOT, "out", "scaling"))
    ap.add_argument("--quick", action="store_true", help="one step each: a smoke test")
    ap.add_argument("--dpsynth", default=os.environ.get("DPSYNTH") or os.path.join(
        ROOT, "target", "release", "examples", "bench_unet"), help="the bench_unet binary")
    ap.add_argument("--python", default=os.path.expanduser(
        "~/.cache/dpsynth/venv-peers/bin/python"), help="the peers' interpreter")
    ap.add_argument("--axes", default=",".join(AXES), help="a subset of " + ",".join(AXES))
    ap.add_argument("--iters", type=int, default=None, help="timed steps (default 10, quick 1)")
    ap.add_argument("--sample-batch", type=int, default=None, help="default 64, quick 4")
    ap.add_argument("--plot-only", action="store_true", help="redraw from OUT/scaling.json")
    a = ap.parse_args()
    a.axes = [x for x in a.axes.split(",") if x]
    bad = [x for x in a.axes if x not in AXES]
    if bad:
        sys.exit(f"unknown axes {bad}; choose from {AXES}")
    a.iters = a.iters or (1 if a.quick else 10)
    a.sample_batch = a.sample_batch or (4 if a.quick else 64)
    a.dpsynth = os.path.abspath(a.dpsynth)
    out = os.path.abspath(a.out)
    os.makedirs(out, exist_ok=True)
    if a.plot_only:
        with open(os.path.join(out, "scaling.json")) as f:
            doc = json.load(f)
    else:
        for exe in (a.dpsynth, a.python):
            if not os.access(exe, os.X_OK):
                sys.exit(f"{exe} is not an executable (see --dpsynth, --python)")
        start = time.perf_counter()
        doc = measure(a, out)
        print(f"{len(doc['measurements'])} measurements in {time.perf_counter() - start:.0f} s")
    svgs = [os.path.join(out, "scaling.svg")]
    if not doc.get("quick"):
        svgs.append(os.path.join(ROOT, "bench", "scaling.svg"))
    for path in svgs:
        plot(doc, path)
        print(f"wrote {path}")
    failed = [m for m in doc["measurements"] if "error" in m]
    if failed:
        print(f"{len(failed)} measurement(s) failed: see their logs in {out}/logs")
        sys.exit(1)


if __name__ == "__main__":
    main()
