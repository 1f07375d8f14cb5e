"""Test-set reconstruction SSE of a bundle's decoder against a checkpoint's.

  python scripts/decoder_sse.py --workdir=runs/eff_recover --which=277500 \
      [--bundle=bundled:mnist_efficient] [--idx_dir=../shared/data/mnist]

Prints, over the MNIST test images, the accuracy and the mean per-image sum
of squared errors of the reconstruction from the true class's capsule for:
the checkpoint alone; the bundle's encoder with the checkpoint's decoder as
float32 and as float16; and the bundle as it is. The figures of
docs/results.md#the-bundles-decoder.
"""

import argparse
import dataclasses
import pathlib
import sys
import time

import jax
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
import capsnet_jax  # pylint: disable=g-import-not-at-top,wrong-import-position
from capsnet_jax.data import idx  # pylint: disable=g-import-not-at-top,wrong-import-position


def measure(name: str, model, images: np.ndarray, labels: np.ndarray) -> None:
  start = time.time()
  out = model.predict(images, keys=("predictions", "class_caps"))
  errors = int(np.sum(out.predictions != labels))
  rec = model.decode(out.class_caps, labels)
  target = images.astype(np.float32) / 255.0
  sse = float(np.mean(np.sum((rec - target) ** 2, axis=(1, 2, 3))))
  print(f"{name}: accuracy {1 - errors / len(labels):.4f} ({errors} errors), "
        f"test SSE {sse:.3f} [{time.time() - start:.0f} s]", flush=True)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--which", default="latest")
  parser.add_argument("--bundle", default="bundled:mnist_efficient")
  parser.add_argument("--idx_dir", default="../shared/data/mnist")
  args = parser.parse_args()
  which = int(args.which) if args.which.isdigit() else args.which
  images, labels = idx.load_mnist_idx(args.idx_dir, "test")
  checkpoint = capsnet_jax.load(args.workdir, which=which)
  measure("checkpoint", checkpoint, images, labels)
  bundle = capsnet_jax.load(args.bundle)
  decoder = checkpoint.state.params["decoder"]
  for dtype in ("float32", "float16"):
    params = dict(bundle.state.params)
    params["decoder"] = jax.tree.map(
        lambda x, d=dtype: np.asarray(np.asarray(x, d), np.float32), decoder)
    hybrid = dataclasses.replace(
        bundle, state=bundle.state.replace(params=params), has_decoder=True)
    measure(f"bundle's encoder + checkpoint's decoder ({dtype})", hybrid,
            images, labels)
  if bundle.has_decoder:
    measure("bundle as shipped", bundle, images, labels)


if __name__ == "__main__":
  main()
