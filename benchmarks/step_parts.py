"""Where a CapsNet training step spends its time, per part and compute dtype.

  python benchmarks/step_parts.py [--batch_size=128] [--dtypes=float32,bfloat16]
      [--pass=train|infer] [--conv_impl=auto|rows|dft|...]
      [--parts=primary,decoder]

Times the forward and backward pass (jax.grad with respect to parameters and
input, as inside the training step) of each part of the MNIST CapsNet on its
own, in each dtype, alternating dtypes so that both see the same load:

  conv1      9x9 convolution 1 -> 256 channels, ReLU      [B, 28, 28, 1]
  primary    9x9 stride-2 convolution to 32 x 8D, squash   [B, 20, 20, 256]
  routing    u_hat and 3 routing iterations (float32 in both dtypes)
  decoder    FC decoder 160 -> 512 -> 1024 -> 784
  patches    the primary convolution's patches alone, cut as conv2d cuts
             them (bfloat16 images: in float32), then cast
  patches_direct   the same cut directly in the compute dtype

and, for the products that make up the primary convolution, the matrix
product on its own (forward, dA, dB). One JSON line per (part, dtype) with
the median seconds; the last line is a summary with the bfloat16 / float32
time ratio per part.
"""

import json
import pathlib
import sys

from absl import app
from absl import flags

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

# pylint: disable=g-import-not-at-top,wrong-import-position
from capsnet_jax import hostmem
if __name__ == "__main__":
  hostmem.use_huge_pages()  # as main.py does, before JAX is imported

import jax
import jax.numpy as jnp

import timing  # benchmarks/timing.py, beside this script
from capsnet_jax.model import conv
from capsnet_jax.model import decoders
from capsnet_jax.model import layers
from capsnet_jax.model import routing
# pylint: enable=g-import-not-at-top,wrong-import-position

FLAGS = flags.FLAGS
flags.DEFINE_integer("batch_size", 128, "Batch size of every part.")
flags.DEFINE_list("dtypes", ["float32", "bfloat16"], "Compute dtypes.")
flags.DEFINE_list("parts", [], "Parts to time (default: all).")
flags.DEFINE_integer("repeats", 7, "Timed calls (the median is reported).")
flags.DEFINE_integer("rounds", 2, "Alternations of the dtypes.")
flags.DEFINE_enum("pass", "train", ["train", "infer"],
                  "train: forward and backward (the convolutions as the train "
                  "step runs them); infer: forward only (as evaluation runs "
                  "them).")
flags.DEFINE_enum("conv_impl", "auto", conv.IMPLS,
                  "Convolution implementation; auto: the one the train step "
                  "(--pass=train) or evaluation (--pass=infer) uses.")


def _module_grad(module, x, train_input_grad: bool = True):
  """jit(grad) of sum(module(x) * cotangent) w.r.t. params (and x); with
  --pass=infer, jit(module.apply) instead."""
  params = module.init(jax.random.key(0), x)
  if FLAGS["pass"].value == "infer":
    return jax.jit(module.apply), (params, x)
  out = jax.eval_shape(module.apply, params, x)
  out = out[0] if isinstance(out, tuple) else out
  cot = jax.random.normal(jax.random.key(1), out.shape, jnp.float32)

  def loss(p, x):
    y = module.apply(p, x)
    y = y[0] if isinstance(y, tuple) else y
    return jnp.sum(y.astype(jnp.float32) * cot)

  argnums = (0, 1) if train_input_grad else 0
  return jax.jit(jax.grad(loss, argnums=argnums)), (params, x)


def parts(batch: int, dtype) -> dict:
  """name -> (jitted function, args)."""
  rng = jax.random.key(2)
  images = jax.random.uniform(rng, (batch, 28, 28, 1))
  hidden = jax.nn.relu(jax.random.normal(rng, (batch, 20, 20, 256)))
  u = jax.random.normal(rng, (batch, 1152, 8)) * 0.1
  masked = jax.random.normal(rng, (batch, 160)) * 0.1
  impl = FLAGS.conv_impl
  if FLAGS["pass"].value == "infer":
    impl = conv.inference_impl(impl)
  out = {
      "conv1": _module_grad(layers.ConvStem(256, 9, impl=impl, dtype=dtype),
                            images, train_input_grad=False),
      "primary": _module_grad(layers.PrimaryCapsules(32, 8, 9, 2, impl=impl,
                                                     dtype=dtype),
                              hidden),
      "routing": _module_grad(routing.ClassCapsules(10, 16, 3), u),
      "decoder": _module_grad(decoders.FCDecoder((28, 28, 1), dtype=dtype),
                              masked),
  }
  if FLAGS["pass"].value == "infer":
    return out
  h = hidden.astype(dtype)
  cot = jax.random.normal(rng, (batch, 6, 6, 81 * 256)).astype(dtype)
  for name, cut in (("patches", lambda *a: conv._patches(*a).astype(dtype)),  # pylint: disable=protected-access
                    ("patches_direct", conv.extract_patches)):
    out[name] = (jax.jit(jax.grad(lambda x, cut=cut: jnp.sum(
        (cut(x, 9, 9, 2) * cot).astype(jnp.float32)))), (h,))
  a = jax.random.normal(rng, (batch * 36, 81 * 256)).astype(dtype)
  b = jax.random.normal(rng, (81 * 256, 256)).astype(dtype)
  g = jax.random.normal(rng, (batch * 36, 256)).astype(dtype)
  dot = conv._dot_f32 if dtype == jnp.bfloat16 else jnp.dot  # pylint: disable=protected-access
  out["mm_fwd"] = (jax.jit(dot), (a, b))
  out["mm_da"] = (jax.jit(lambda g, b: dot(g, conv._row_major_transpose(b))),  # pylint: disable=protected-access
                  (g, b))
  out["mm_db"] = (jax.jit(lambda a, g: dot(conv._row_major_transpose(a), g)),  # pylint: disable=protected-access
                  (a, g))
  return out


def main(argv):
  del argv
  dtypes = [jnp.dtype(d) for d in FLAGS.dtypes]
  built = {d: parts(FLAGS.batch_size, d) for d in dtypes}
  names = FLAGS.parts or list(built[dtypes[0]])
  seconds = {(n, d.name): [] for n in names for d in dtypes}
  for _ in range(FLAGS.rounds):
    for name in names:
      for d in dtypes:
        fn, args = built[d][name]
        jax.block_until_ready(fn(*args))  # compile and warm up
        seconds[(name, d.name)].append(timing.median_seconds(
            lambda fn=fn, args=args: fn(*args), FLAGS.repeats))
  summary = {}
  for name in names:
    row = {d.name: min(seconds[(name, d.name)]) for d in dtypes}
    for d, s in row.items():
      print(json.dumps(dict(part=name, dtype=d, seconds=s,
                            batch_size=FLAGS.batch_size)))
    if "float32" in row and "bfloat16" in row:
      row["bf16_over_f32"] = row["bfloat16"] / row["float32"]
    summary[name] = row
  print(json.dumps(dict(summary=summary, device=str(jax.devices()[0]),
                        batch_size=FLAGS.batch_size)))


if __name__ == "__main__":
  app.run(main)
