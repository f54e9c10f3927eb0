#!/usr/bin/env python3
"""Pixel differences between two sample folders of the same images (`dpsynth sample` outputs
with the same model, seed and settings, for example in float32 and in bfloat16).

    python3 bench/image_diff.py OUT_A OUT_B

Pairs OUT_A/images/<class>/<file> with the same path under OUT_B and prints the mean, median,
99th percentile and largest absolute difference of the 8-bit pixel values, and the share of
pixels that are the same byte. Needs numpy and Pillow.
"""

import os
import sys

import numpy as np
from PIL import Image


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    a, b = (os.path.join(d, "images") for d in sys.argv[1:])
    diffs = []
    for root, _, files in os.walk(a):
        for name in sorted(files):
            path_a = os.path.join(root, name)
            path_b = os.path.join(b, os.path.relpath(path_a, a))
            if not os.path.exists(path_b):
                sys.exit(f"{path_b}: missing (the folders must hold the same images)")
            x = np.asarray(Image.open(path_a), dtype=np.int32)
            y = np.asarray(Image.open(path_b), dtype=np.int32)
            diffs.append(np.abs(x - y).ravel())
    if not diffs:
        sys.exit(f"{a}: no images")
    d = np.concatenate(diffs)
    print(
        f"{len(diffs)} images, {d.size} pixel values: mean |diff| {d.mean():.3f}, "
        f"median {np.median(d):.0f}, 99th percentile {np.percentile(d, 99):.0f}, "
        f"max {d.max()}, unchanged {100 * (d == 0).mean():.1f}%"
    )


if __name__ == "__main__":
    main()
