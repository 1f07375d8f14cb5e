"""Reconstruction decoders: output range and shape, the deconvolution layout
per image size (parameter counts derived by hand), batch norm, bad names."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from capsnet_jax.model import decoders
from conftest import shared_mnist


def _count(tree):
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


@pytest.mark.parametrize("name", decoders.DECODERS)
@pytest.mark.parametrize("shape,classes", [((28, 28, 1), 10), ((32, 32, 3), 10),
                                           ((32, 32, 1), 5), ((24, 24, 3), 10)])
def test_decoders_output_images_in_unit_range(name, shape, classes):
  dec = decoders.create_decoder(name, shape, classes, hidden=(8, 8))
  x = jax.random.normal(jax.random.key(0), (2, classes * 16)) * 10
  y, _ = dec.init_with_output(jax.random.key(1), x)
  assert y.shape == (2, *shape)
  assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0


# Deconvolution layouts by hand: Dense K*16 -> start map, ConvT k9 s2
# (n -> 2n + 7), ConvT k9 (n -> n + 8) per further width, ConvT C k2 (+1).
DECONV_COUNTS = {
    # 24x24x3, 10 classes: 4x4x10, ConvT 32, ConvT 64, ConvT 3.
    ((24, 24, 3), 10): (160 * 160 + 160) + (81 * 10 * 32 + 32)
                       + (81 * 32 * 64 + 64) + (4 * 64 * 3 + 3),
    # 22x22x1, 2 classes: 3x3x2, ConvT 32, ConvT 64, ConvT 1.
    ((22, 22, 1), 2): (32 * 18 + 18) + (81 * 2 * 32 + 32)
                      + (81 * 32 * 64 + 64) + (4 * 64 + 1),
    # 40x40x1, 2 classes: 8x8x2, ConvT 32, 64, 128, ConvT 1.
    ((40, 40, 1), 2): (32 * 128 + 128) + (81 * 2 * 32 + 32)
                      + (81 * 32 * 64 + 64) + (81 * 64 * 128 + 128)
                      + (4 * 128 + 1),
}


@pytest.mark.parametrize("key", list(DECONV_COUNTS), ids=str)
def test_deconv_layout_per_image_size(key):
  shape, classes = key
  dec = decoders.create_decoder("deconv", shape, classes)
  params = jax.eval_shape(lambda: dec.init(
      jax.random.key(0), jnp.zeros((1, classes * 16))))["params"]
  assert _count(params) == DECONV_COUNTS[key]
  start = dec._layout()[0]
  assert params["dense"]["kernel"].shape == (classes * 16,
                                             start[0] * start[1] * classes)


@pytest.mark.parametrize("shape,message", [
    ((28, 30, 1), "square"), ((29, 29, 1), "no layout"),
    ((20, 20, 1), "no layout")])
def test_deconv_refuses_sizes_without_a_layout(shape, message):
  with pytest.raises(ValueError, match=message):
    decoders.create_decoder("deconv", shape, 10)._layout()


def test_fc_batch_norm_adds_scale_and_bias_per_hidden_unit():
  def count(batch_norm):
    dec = decoders.create_decoder("fc", (4, 4, 1), 3, batch_norm=batch_norm,
                                  hidden=(8, 6))
    return jax.eval_shape(lambda: dec.init(
        jax.random.key(0), jnp.zeros((1, 48))))
  plain, bn = count(False), count(True)
  # 48*8+8 + 8*6+6 + 6*16+16 by hand, then 2 * (8 + 6) BN parameters.
  assert _count(plain["params"]) == 392 + 54 + 112
  assert _count(bn["params"]) == 558 + 28
  assert _count(bn["batch_stats"]) == 28 and "batch_stats" not in plain


def test_unknown_decoder_lists_the_valid_ones():
  with pytest.raises(ValueError, match="valid: .'fc', 'deconv'."):
    decoders.create_decoder("mlp", (28, 28, 1), 10)


def _train_deconv_alone(output_mean, steps=20, batch=16):
  """The MNIST deconv decoder (default init) trained alone, with Adam 1e-3,
  to reconstruct real digits from 16-D codes of their true class (a fixed
  random projection of the image, 0.9 long, as a trained capsule is).
  Returns (test SSE, live channels of its last hidden layer whose output
  weights sum above zero)."""
  from capsnet_jax.data import idx  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  x, y = idx.load_mnist_idx(str(shared_mnist()), "train")
  x = x[:3328].reshape(-1, 28, 28, 1).astype(np.float32) / 255.0
  y = y[:3328]
  codes = x.reshape(len(x), -1) @ np.random.RandomState(0).randn(784, 16)
  codes = 0.9 * codes / np.linalg.norm(codes, axis=1, keepdims=True)
  inputs = np.zeros((len(x), 10, 16), np.float32)
  inputs[np.arange(len(x)), y] = codes
  inputs = inputs.reshape(len(x), 160)
  dec = decoders.create_decoder("deconv", (28, 28, 1), 10,
                                output_mean=output_mean)
  # Everything jitted: op by op, each of the patches' slices compiles apart.
  params = jax.jit(dec.init)(jax.random.key(0), inputs[:1])
  tx = optax.adam(1e-3)

  def sse(p, a, t):
    return jnp.mean(jnp.sum((dec.apply(p, a) - t) ** 2, axis=(1, 2, 3)))

  @jax.jit
  def step(p, o, a, t):
    g = jax.grad(sse)(p, a, t)
    u, o = tx.update(g, o, p)
    return optax.apply_updates(p, u), o

  opt = tx.init(params)
  order = np.random.RandomState(1).randint(0, 3072, (steps, batch))
  for i in order:
    params, opt = step(params, opt, inputs[i], x[i])
  @jax.jit
  def evaluate(p):
    test_sse = sse(p, inputs[3072:], x[3072:])  # 256 held-out digits
    _, inter = dec.apply(p, inputs[:64], capture_intermediates=True,
                         mutable=["intermediates"])
    pre = inter["intermediates"]["deconv1"]["__call__"][0]  # [B, 27, 27, 64]
    return test_sse, jnp.any(pre > 0, axis=(0, 1, 2))

  test_sse, live = evaluate(params)
  test_sse, live = float(test_sse), np.asarray(live)
  out_w = np.asarray(params["params"]["out"]["kernel"]).sum(axis=(0, 1, 3))
  return test_sse, int(np.sum(live & (out_w > 0)))


def test_deconv_decoder_keeps_its_brightening_channels():
  """Starting at 0.5 (output_mean=None), every pixel of MNIST first asks to
  be darker and the last hidden layer's channels that brighten die: after
  20 steps none of the 64 is left (32 at init) and the SSE (99.7) is worse
  than an all-black image's (79.2 on these 256 held-out digits). Starting
  at the target's mean (0.1307) all 32 stay and the SSE is 57.0, below the
  best constant image's 68.1."""
  test_sse, brightening = _train_deconv_alone(0.1307)
  assert brightening >= 24
  assert test_sse < 68.0


def test_a_collapsed_decoder_is_reported(caplog):
  """reconstruction_spread is each reconstruction's pixel std (mean over
  objects); warn_if_collapsed warns below COLLAPSED_STD (0.01) only."""
  from capsnet_jax.training import loop  # pylint: disable=g-import-not-at-top
  from capsnet_jax.training import steps  # pylint: disable=g-import-not-at-top
  constant = np.full((2, 4, 4, 1), 0.3, np.float32)
  halves = np.zeros((2, 4, 4, 1), np.float32)
  halves[:, :2] = 1.0  # half the pixels 1, half 0: std 0.5
  np.testing.assert_allclose(steps.reconstruction_spread(constant), [0.0, 0.0],
                             atol=1e-7)
  np.testing.assert_allclose(steps.reconstruction_spread(halves), [0.5, 0.5],
                             atol=1e-7)
  # Two objects an image (MultiMNIST): their mean, (0 + 0.5) / 2.
  pairs = np.stack([constant, halves], axis=1)  # [2, 2, 4, 4, 1]
  np.testing.assert_allclose(steps.reconstruction_spread(pairs), [0.25, 0.25],
                             atol=1e-7)
  # The collapsed runs of docs/results.md spread 0.011-0.014, the
  # learning ones 0.108 or more.
  assert steps.COLLAPSED_STD == 0.05
  with caplog.at_level("WARNING"):
    assert not loop.warn_if_collapsed(
        {"reconstruction_std": 0.05, "reconstruction_loss": 50.0}, 100)
    assert not loop.warn_if_collapsed(
        {"reconstruction_std": 0.108, "reconstruction_loss": 58.8}, 50)
    assert not loop.warn_if_collapsed({"reconstruction_loss": 50.0}, 100)
    assert not caplog.records
    assert loop.warn_if_collapsed(
        {"reconstruction_std": 0.011, "reconstruction_loss": 89.445}, 300)
  assert [r.getMessage() for r in caplog.records] == [
      "step 300: the reconstructions have collapsed to a constant image "
      "(pixel std 0.011 < 0.05): the decoder is not learning, and the "
      "reconstruction loss (89.445) is that of a constant output. A deconv "
      "decoder started at 0.5 collapses this way; "
      "--config.decoder_output_bias=data_mean starts it at the data's mean "
      "(docs/results.md, \"Deconvolution decoder\")."]
