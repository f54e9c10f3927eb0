#!/usr/bin/env python3
"""The whole default run, dpsynth against PyTorch + Opacus + diffusers (`peer_pipeline.py`):
runs `dpsynth --threads N run --out OUT/dpsynth` and then the peer with the same thread count
(`--peer-first`: the other way round),
and prints each stage's wall-clock seconds on both sides and their ratio (peer / dpsynth), the
totals with and without dpsynth's memorization stage (which has no peer), both processes' wall
and CPU time and peak resident set as measured from outside, and both test accuracies.

    python3 bench/peers/pipeline_vs_peer.py [--threads 1] [--scale F] [--out DIR]

dpsynth is `$DPSYNTH`, else target/release/dpsynth (copy it aside if someone may rebuild it
meanwhile); the peer runs under `--python` (default `$PEER_PYTHON`, else
~/.cache/dpsynth/venv-peers/bin/python). dpsynth runs the default config (`--scale F` < 1: the
same shrunk run as the peer, `run_settings` in `peer_harness.py`) as OUT/dpsynth-config.toml,
with `precision = "float32"`, since the peer samples in float32. `--config PATH` gives both
sides another run config (the peer refuses one it does not reproduce). `--dpsynth-report PATH` /
`--peer-json PATH` reuse a finished side instead of running it. Standard library only; run from
anywhere.
"""

import argparse
import datetime
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from peer_harness import ROOT, scaled_config_text  # noqa: E402

STAGES = ("finetune", "sample", "evaluate")


def run_timed(cmd, log, env=None):
    """Runs `cmd` from the repository root with its output in `log`; returns (wall s, CPU s,
    peak resident set MiB)."""
    print("$ " + " ".join(cmd), flush=True)
    print(f"  (output in {log})", flush=True)
    with open(log, "w") as f:
        t = time.perf_counter()
        p = subprocess.Popen(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(p.pid, 0)
        wall = time.perf_counter() - t
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        with open(log) as f:
            tail = f.read()[-3000:]
        sys.exit(f"{cmd[0]} failed ({code}); the end of {log}:\n{tail}")
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024


def ratio(peer, ours):
    return f"{peer / ours:8.2f}" if ours and peer is not None else f"{'-':>8}"


def num(v, fmt="10.1f"):
    return f"{v:{fmt}}" if v is not None else f"{'-':>10}"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--out", default=None, help="default: out/pipeline-vs-peer/<UTC time>")
    ap.add_argument("--dpsynth", default=os.environ.get("DPSYNTH"))
    ap.add_argument("--python", default=os.environ.get("PEER_PYTHON"))
    ap.add_argument("--accountant", choices=["prv", "rdp"], default="prv")
    ap.add_argument("--config", default=None, help="a run config for both (default: the default)")
    ap.add_argument("--dpsynth-report", default=None, help="reuse this report.json")
    ap.add_argument("--peer-json", default=None, help="reuse this peer JSON")
    ap.add_argument("--peer-first", action="store_true", help="run the peer before dpsynth")
    a = ap.parse_args()
    dpsynth = a.dpsynth or os.path.join(ROOT, "target", "release", "dpsynth")
    python = a.python or os.path.expanduser("~/.cache/dpsynth/venv-peers/bin/python")
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out = os.path.abspath(a.out or os.path.join(ROOT, "out", "pipeline-vs-peer", stamp))
    os.makedirs(out, exist_ok=True)
    proc = {}

    def run_dpsynth():
        if a.dpsynth_report:
            return a.dpsynth_report
        cmd = [dpsynth, "--threads", str(a.threads), "run", "--out", os.path.join(out, "dpsynth")]
        config = os.path.join(out, "dpsynth-config.toml")
        with open(config, "w") as f:
            f.write(scaled_config_text(a.scale, *([a.config] if a.config else [])))
        cmd += ["--config", os.path.abspath(config)]
        proc["dpsynth"] = run_timed(cmd, os.path.join(out, "dpsynth.log"))
        return os.path.join(out, "dpsynth", "report.json")

    def run_peer():
        if a.peer_json:
            return a.peer_json
        path = os.path.join(out, "peer", "report.json")
        cmd = [python, os.path.join(ROOT, "bench", "peers", "peer_pipeline.py")]
        cmd += ["--threads", str(a.threads), "--scale", str(a.scale)]
        cmd += ["--accountant", a.accountant, "--json", path, "--out", os.path.join(out, "peer")]
        if a.config:
            cmd += ["--config", os.path.abspath(a.config)]
        proc["peer"] = run_timed(cmd, os.path.join(out, "peer.log"))
        return path

    if a.peer_first:
        peer_path = run_peer()
        report_path = run_dpsynth()
    else:
        report_path = run_dpsynth()
        peer_path = run_peer()
    with open(report_path) as f:
        ours = json.load(f)
    with open(peer_path) as f:
        peer = json.load(f)

    d, p = ours["seconds"], peer["seconds"]
    mem = d.get("memorization", 0.0)
    rows = [(k, d[k], p[k]) for k in STAGES]
    rows.append(
        (
            "other (data, I/O)",
            d["total"] - sum(d[k] for k in STAGES) - mem,
            p["total"] - sum(p[k] for k in STAGES),
        )
    )
    rows.append(("total w/o memorization", d["total"] - mem, p["total"]))
    rows.append(("memorization", mem, None))
    rows.append(("total with memorization", d["total"], p["total"]))
    if proc:
        dw, dc, dm = proc.get("dpsynth", (None, None, None))
        pw, pc, pm = proc.get("peer", (None, None, None))
        rows.append(("process wall (outside)", dw, pw))
        rows.append(("process CPU (outside)", dc, pc))
        rows.append(("peak RSS MiB (outside)", dm, pm))

    print()
    print(
        f"threads {a.threads}, scale {a.scale}: private set {peer['private_examples']}, "
        f"{peer['synthetic_images']} synthetic images (dpsynth {ours.get('synthetic_images')})"
    )
    print(f"{'stage (wall)':<26}{'dpsynth s':>10}{'peer s':>10}{'peer/dpsynth':>14}")
    for name, ds, ps in rows:
        print(f"{name:<26}{num(ds)}{num(ps)}{ratio(ps, ds):>14}")
    print(
        f"test accuracy (mnist:test): dpsynth {100 * ours['test_accuracy']:.2f}%, "
        f"peer {100 * peer['test_accuracy']:.2f}%"
    )
    print(
        f"noise multiplier: dpsynth {ours.get('noise_multiplier'):.4f} (pld, epsilon "
        f"{ours.get('epsilon_spent'):.3f}), peer {peer['noise_multiplier']:.4f} "
        f"({peer['accountant']}, epsilon {peer['epsilon_spent']:.3f}); steps "
        f"{ours.get('steps')} / {peer['steps']}"
    )
    print(
        "(total w/o memorization: dpsynth's total less its memorization stage; the peer's "
        "total has none. 'other': reading MNIST, loading/saving models, writing the PNG samples "
        "and grid.png. Outside times include start-up: Python's imports for the peer.)"
    )
    summary = {
        "threads": a.threads,
        "scale": a.scale,
        "order": "peer, dpsynth" if a.peer_first else "dpsynth, peer",
        "rows": [{"stage": n, "dpsynth_s": ds, "peer_s": ps} for n, ds, ps in rows],
        "test_accuracy": {"dpsynth": ours["test_accuracy"], "peer": peer["test_accuracy"]},
        "dpsynth_report": os.path.abspath(report_path),
        "peer_json": os.path.abspath(peer_path),
    }
    with open(os.path.join(out, "comparison.json"), "w") as f:
        json.dump(summary, f, indent=2)
    print(f"wrote {os.path.join(out, 'comparison.json')}")


if __name__ == "__main__":
    main()
