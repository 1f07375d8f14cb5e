"""Reconstruction decoders: output range and shape, the deconvolution layout
per image size (parameter counts derived by hand), batch norm, bad names."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from capsnet_jax import decoders


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
