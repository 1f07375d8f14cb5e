"""Rotation accuracies with an independent rotation: PIL's Image.rotate.

  python scripts/rotation_agreement.py [--workdir=bundled:mnist_efficient] \\
      [--idx_dir=../shared/data/mnist] [--examples=N] [--robustness=FILE]

--mode=robustness rotates test digits with capsnet_jax.data.affine (our own
numpy warp). This script rotates the same digits with Pillow (bilinear
resampling, zero fill, same size, counter-clockwise about the image centre:
the same rotation by another implementation), predicts them with the same
model and prints one JSON line per angle, ``{"impl": "pil", "value":
degrees, "accuracy": float, "n": int}``; with --robustness=FILE (a
robustness.json of the same model) it ends with the largest difference in
points between the two. docs/results.md, "Robustness", reports it.
"""

import argparse
import json
import os
import sys

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from capsnet_jax.analysis import robustness  # pylint: disable=g-import-not-at-top,wrong-import-position
from capsnet_jax.data import idx  # pylint: disable=g-import-not-at-top,wrong-import-position
from capsnet_jax.inference import trained  # pylint: disable=g-import-not-at-top,wrong-import-position


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--workdir", default="bundled:mnist_efficient")
  p.add_argument("--idx_dir", default="../shared/data/mnist")
  p.add_argument("--examples", type=int, default=0,
                 help="the first N test images (0: all 10,000)")
  p.add_argument("--robustness", default="",
                 help="a robustness.json of the same model to compare with")
  args = p.parse_args()
  images, labels = idx.load_mnist_idx(args.idx_dir, "test")
  if args.examples:
    images, labels = images[:args.examples], labels[:args.examples]
  digits = images[..., 0]
  model = trained.load(args.workdir)
  ours = {}
  if args.robustness:
    ours = {r["value"]: r["accuracy"] for r in robustness.read(args.robustness)
            if r["transform"] == "rotation"}
  gap = 0.0
  for angle in robustness.SWEEPS["rotation"]:
    rotated = np.stack([np.asarray(Image.fromarray(d).rotate(
        angle, resample=Image.BILINEAR)) for d in digits])
    accuracy = float(np.mean(robustness.predicted_classes(model, rotated)
                             == labels))
    print(json.dumps({"impl": "pil", "value": angle, "accuracy": accuracy,
                      "n": len(labels)}), flush=True)
    if angle in ours:
      gap = max(gap, abs(accuracy - ours[angle]))
  if ours:
    print(f"largest difference from {args.robustness}: {100 * gap:.2f} "
          "points", file=sys.stderr)


if __name__ == "__main__":
  main()
