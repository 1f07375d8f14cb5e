"""Tests of the assembled model: parameter counts, batch norm, options."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from capsnet_jax.training import losses
from capsnet_jax.model import models
from configs import default

# (num_classes, image shape, decoder) -> (total, decoder) from REFERENCE.md.
COUNTS = {
    (10, (28, 28, 1), "fc"): (8_215_728, 1_411_344),
    (10, (28, 28, 1), "deconv"): (7_054_505, 250_121),
    (5, (32, 32, 1), "fc"): (8_256_848, 1_616_384),
    (5, (32, 32, 1), "deconv"): (7_490_081, 849_617),
    (10, (32, 32, 3), "fc"): (11_749_280, 3_756_544),
    (10, (32, 32, 3), "deconv"): (8_875_619, 882_883),
}
PART_COUNTS = {  # conv1, primary, class caps per input shape.
    (28, 28, 1): (20_992, 5_308_672, 1_474_720),
    (32, 32, 1): (20_992, 5_308_672, 1_310_800),
    (32, 32, 3): (62_464, 5_308_672, 2_621_600),
}


def _count(tree):
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def _shapes(model):
  return jax.eval_shape(lambda: model.init(
      jax.random.key(0), jnp.zeros((1, *model.image_shape))))


@pytest.mark.parametrize("key", list(COUNTS), ids=lambda k: f"{k[1]}-{k[2]}")
def test_parameter_counts_match_reference(key):
  num_classes, shape, decoder = key
  params = _shapes(models.CapsNet(num_classes=num_classes, image_shape=shape,
                                  decoder=decoder))["params"]
  total, dec = COUNTS[key]
  assert _count(params) == total
  assert _count(params["decoder"]) == dec
  stem, primary, class_caps = PART_COUNTS[shape]
  assert _count(params["stem"]) == stem
  assert _count(params["primary"]) == primary
  assert _count(params["class_caps"]) == class_caps
  assert params["class_caps"]["W"].shape[2:] == (16, 8)


def test_batch_norm_adds_912_parameters_to_the_mnist_deconv_decoder():
  variables = _shapes(models.CapsNetMNIST(decoder="deconv", batch_norm=True))
  assert _count(variables["params"]["decoder"]) == 250_121 + 912
  assert "batch_stats" in variables


def test_unknown_initializer_lists_the_valid_ones():
  with pytest.raises(ValueError, match="default"):
    models.initializers.scheme("glorot")


def _tiny(**kw):
  return models._CapsNetTiny(**kw)


def test_outputs_and_masking_by_true_label_in_training():
  model = _tiny()
  images = jax.random.uniform(jax.random.key(0), (3, 28, 28, 1))
  labels = jnp.array([1, 2, 3])
  variables = model.init(jax.random.key(1), images)
  out = model.apply(variables, images, labels, train=True)
  assert out["class_caps"].shape == (3, 10, 16)
  assert out["coupling"].shape == (3, 6 * 6 * 4, 10)
  assert out["reconstructions"].shape == (3, 28, 28, 1)
  expected = model.apply(variables, out["class_caps"], labels,
                         method=models.CapsNet.decode)
  np.testing.assert_allclose(np.asarray(out["reconstructions"]),
                             np.asarray(expected), atol=1e-6)
  out_eval = model.apply(variables, images, labels, train=False)
  by_prediction = model.apply(variables, out_eval["class_caps"],
                              out_eval["predictions"],
                              method=models.CapsNet.decode)
  np.testing.assert_allclose(np.asarray(out_eval["reconstructions"]),
                             np.asarray(by_prediction), atol=1e-6)


def _loss(model, variables, images, labels, train):
  out, updates = model.apply(variables, images, labels, train=train,
                             mutable=["batch_stats"])
  loss = jnp.mean(losses.margin_loss(out["lengths"], labels)
                  + 0.0005 * losses.reconstruction_sse(out["reconstructions"],
                                                       images))
  return loss, updates


def test_gradients_finite_for_all_zero_input():
  model = _tiny()
  images = jnp.zeros((2, 28, 28, 1))
  labels = jnp.array([0, 1])
  variables = model.init(jax.random.key(0), images)
  grads = jax.grad(lambda p: _loss(model, {"params": p}, images, labels,
                                   True)[0])(variables["params"])
  for g in jax.tree.leaves(grads):
    assert np.all(np.isfinite(np.asarray(g)))


@pytest.mark.parametrize("batch_norm,decoder", [(False, "fc"), (True, "deconv")])
def test_tiny_train_steps_lower_the_loss(batch_norm, decoder):
  model = _tiny(batch_norm=batch_norm, decoder=decoder)
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.uniform(size=(16, 28, 28, 1)), jnp.float32)
  labels = jnp.asarray(rng.integers(0, 10, size=16))
  variables = model.init(jax.random.key(0), images)
  params, stats = variables["params"], variables.get("batch_stats", {})
  tx = optax.adam(3e-3)
  opt_state = tx.init(params)

  @jax.jit
  def step(params, stats, opt_state):
    def f(p):
      v = {"params": p, **({"batch_stats": stats} if stats else {})}
      return _loss(model, v, images, labels, True)
    (loss, updates), grads = jax.value_and_grad(f, has_aux=True)(params)
    upd, opt_state = tx.update(grads, opt_state)
    return (optax.apply_updates(params, upd),
            updates.get("batch_stats", stats), opt_state, loss)

  first = None
  for _ in range(8):
    params, new_stats, opt_state, loss = step(params, stats, opt_state)
    if batch_norm:  # Running statistics move in training.
      assert not np.allclose(np.asarray(jax.tree.leaves(new_stats)[0]),
                             np.asarray(jax.tree.leaves(stats)[0]))
    stats = new_stats
    first = float(loss) if first is None else first
  assert float(loss) < first
  if batch_norm:
    # Evaluation uses the running statistics: deterministic, no mutation, and
    # batch-size independent.
    v = {"params": params, "batch_stats": stats}
    full = model.apply(v, images, train=False)["lengths"]
    part = model.apply(v, images[:4], train=False)["lengths"]
    np.testing.assert_allclose(np.asarray(full[:4]), np.asarray(part),
                               atol=1e-5)


def test_core_library_imports_without_tensorflow():
  # The model, the compiled steps, IDX input, checkpoints and the benchmark's
  # imports must not pull in TensorFlow (GPU images may not have it).
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  code = ("import sys\n"
          "from capsnet_jax import train, models, idx, checkpoints, conv\n"
          "from capsnet_jax import augment, losses, routing, decoders\n"
          "bad = sorted(m for m in sys.modules\n"
          "             if m.split('.')[0] in ('tensorflow', 'tensorflow_datasets'))\n"
          "assert not bad, bad[:5]\n")
  root = __file__.rsplit("/tests/", 1)[0]
  result = subprocess.run([sys.executable, "-c", code], cwd=root,
                          capture_output=True, text=True, check=False)
  assert result.returncode == 0, result.stderr[-2000:]


def test_bfloat16_compute_keeps_float32_parameters_and_capsules():
  images = jax.random.uniform(jax.random.key(0), (4, 28, 28, 1))
  labels = jnp.array([0, 1, 2, 3])
  model32, model16 = _tiny(), _tiny(dtype=jnp.bfloat16)
  variables = model32.init(jax.random.key(1), images)
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(variables))
  out32 = model32.apply(variables, images, labels)
  out16 = model16.apply(variables, images, labels)
  for key in ("primary_caps", "class_caps", "coupling", "lengths",
              "reconstructions"):
    assert out16[key].dtype == jnp.float32, key
  # Same parameters, lower-precision convolutions: close, not equal. The
  # untrained tiny model's lengths are about 1e-3, so the error is measured
  # relative to them. bfloat16 keeps 8 significant bits: each rounding is
  # within u = 2^-8 (0.39%) relative. The path rounds at about 8 places
  # (input, conv1 kernel and output, primary kernel and output, u, W,
  # u_hat), so 8u = 3.1% is a first-order worst case; independent roundings
  # add like a random walk (sqrt(8) u = 1.1%) and routing averages 144
  # predictions. 4u = 1.6% bounds it (measured: 0.5% for lengths, 0.7% for
  # class capsules), and a median of at least u/16 shows bfloat16 really ran
  # (float32 alone differs by ~1e-7 relative).
  u = 2.0 ** -8
  l16, l32 = np.asarray(out16["lengths"]), np.asarray(out32["lengths"])
  assert 1e-4 < float(l32.min()) and float(l32.max()) < 1e-2  # ~1e-3
  rel_lengths = np.abs(l16 - l32) / l32
  v16, v32 = np.asarray(out16["class_caps"]), np.asarray(out32["class_caps"])
  rel_caps = (np.linalg.norm(v16 - v32, axis=-1)
              / np.linalg.norm(v32, axis=-1))
  assert float(rel_lengths.max()) < 4 * u, rel_lengths.max()
  assert float(rel_caps.max()) < 4 * u, rel_caps.max()
  assert float(np.median(rel_lengths)) > u / 16, np.median(rel_lengths)
  grads = jax.grad(lambda p: _loss(model16, {"params": p}, images, labels,
                                   True)[0])(variables["params"])
  for g in jax.tree.leaves(grads):
    assert g.dtype == jnp.float32 and np.all(np.isfinite(np.asarray(g)))


def test_cifar10_paper_model_same_padding_counts():
  """The authors' CIFAR10 model: conv1 and primary capsules with SAME
  padding on 24x24 crops, 64 types -> 12 x 12 x 64 = 9,216 capsules.
  conv1 9*9*3*256 + 256 = 62,464; primary 9*9*256*512 + 512 = 10,617,344;
  class caps 9216*10*16*8 + 10*16 = 11,796,640; FC decoder to 24*24*3:
  160*512+512 + 512*1024+1024 + 1024*1728+1728 = 2,378,944."""
  from configs import cifar10_paper  # pylint: disable=g-import-not-at-top
  from capsnet_jax.analysis import summary  # pylint: disable=g-import-not-at-top
  model, variables = summary.parameter_shapes(cifar10_paper.get_config())
  params = variables["params"]
  assert params["class_caps"]["W"].shape == (9216, 10, 16, 8)
  assert _count(params["stem"]) == 62_464
  assert _count(params["primary"]) == 10_617_344
  assert _count(params["class_caps"]) == 11_796_640
  assert _count(params["decoder"]) == 2_378_944
  assert _count(params) == 24_855_392
  out = jax.eval_shape(lambda: model.apply(
      jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), variables),
      jnp.zeros((2, 24, 24, 3))))
  assert out["primary_caps"].shape == (2, 9216, 8)


@pytest.mark.parametrize("size,kernel,stride,expected", [
    (24, 9, 1, (4, 4)), (24, 9, 2, (3, 4)), (28, 9, 2, (3, 4)), (5, 2, 2, (0, 1))])
def test_same_padding_amounts_follow_tensorflow(size, kernel, stride, expected):
  from capsnet_jax.model import conv  # pylint: disable=g-import-not-at-top
  assert conv.same_padding(size, kernel, stride) == expected


def test_reference_init_has_the_reference_scales():
  """torch's xavier_normal_(gain=0.002) of W [1, 1152, 10, 16, 8]: fan_in =
  1152 * 1280, fan_out = 1280, std = 0.002 * sqrt(2 / 1,475,840) = 2.328e-6;
  conv1 [256, 1, 9, 9] with gain 0.02: std = 0.02 * sqrt(2 / (81 + 20736))
  = 1.960e-4."""
  model = models.CapsNetMNIST(init_scheme="reference")
  params = model.init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))["params"]
  w = np.asarray(params["class_caps"]["W"])
  assert w.shape == (1152, 10, 16, 8)
  assert float(np.std(w)) == pytest.approx(2.328e-6, rel=0.01)
  conv1 = np.asarray(params["stem"]["conv"]["kernel"])
  assert float(np.std(conv1)) == pytest.approx(1.960e-4, rel=0.02)


# The reference's --leaky: one more class capsule and, as its decoder is built
# for num_classes + 1 capsules, a decoder input of 11 * 16. By hand, MNIST:
# class caps W gains 1152 * 16 * 8 = 147,456 and bias 16: 1,474,720 + 147,472
# = 1,622,192. FC decoder: Dense(176 -> 512) instead of (160 -> 512), 16 * 512
# = 8,192 more: 1,419,536. Deconv decoder: Dense(176 -> 396) 70,092 instead
# of Dense(160 -> 360) 57,960, and ConvT(11 -> 32, k9) 28,544 instead of
# ConvT(10 -> 32) 25,952: 250,121 + 12,132 + 2,592 = 264,845.
ORPHAN_COUNTS = {  # decoder -> (total, class caps, decoder)
    "fc": (20_992 + 5_308_672 + 1_622_192 + 1_419_536, 1_622_192, 1_419_536),
    "deconv": (20_992 + 5_308_672 + 1_622_192 + 264_845, 1_622_192, 264_845),
}


@pytest.mark.parametrize("decoder", ["fc", "deconv"])
def test_orphan_capsule_parameter_counts(decoder):
  params = _shapes(models.CapsNetMNIST(decoder=decoder,
                                       orphan_capsule=True))["params"]
  total, class_caps, dec = ORPHAN_COUNTS[decoder]
  assert _count(params) == total  # 8,371,392 (fc), 7,216,701 (deconv)
  assert _count(params["class_caps"]) == class_caps
  assert _count(params["decoder"]) == dec
  assert params["class_caps"]["W"].shape == (1152, 11, 16, 8)


def test_summary_counts_the_orphan_capsule(capsys):
  from capsnet_jax.analysis import summary  # pylint: disable=g-import-not-at-top
  from configs import default  # pylint: disable=g-import-not-at-top
  config = default.get_config()
  config.leaky_routing, config.leaky_variant = True, "reference"
  counts = summary.print_summary(config)
  assert counts["total_params"] == 8_371_392
  assert counts["class_caps_params"] == 1_622_192
  assert counts["decoder_params"] == 1_419_536
  assert counts["orphan_capsule"] is True
  assert '"total_params": 8371392' in capsys.readouterr().out


@pytest.mark.parametrize("variant,leaky,orphan", [
    ("authors", True, False), ("reference", False, True)])
def test_leaky_variant_selects_logit_or_capsule(variant, leaky, orphan):
  from configs import default  # pylint: disable=g-import-not-at-top
  config = default.get_config()
  config.leaky_routing, config.leaky_variant = True, variant
  model = models.create_model(config)
  assert (model.leaky_routing, model.orphan_capsule) == (leaky, orphan)
  config.leaky_routing = False
  model = models.create_model(config)
  assert (model.leaky_routing, model.orphan_capsule) == (False, False)


def test_orphan_capsule_is_left_out_of_predictions_and_outputs():
  model = _tiny(orphan_capsule=True)
  images = jax.random.uniform(jax.random.key(0), (3, 28, 28, 1))
  labels = jnp.array([1, 2, 3])
  variables = model.init(jax.random.key(1), images)
  params = variables["params"]
  assert params["class_caps"]["W"].shape[1] == 11
  assert params["decoder"]["dense0"]["kernel"].shape[0] == 11 * 16
  # A large orphan bias makes the orphan the longest capsule of every image.
  bias = params["class_caps"]["bias"].at[10].set(5.0)
  params = {**params, "class_caps": {**params["class_caps"], "bias": bias}}
  out = model.apply({"params": params}, images, train=False)
  assert out["lengths"].shape == (3, 10)
  assert out["class_caps"].shape == (3, 10, 16)
  assert out["coupling"].shape == (3, 6 * 6 * 4, 10)
  orphan = np.asarray(out["orphan_lengths"])
  lengths = np.asarray(out["lengths"])
  assert np.all(orphan > 0.99) and np.all(orphan[:, None] > lengths)
  np.testing.assert_array_equal(np.asarray(out["predictions"]),
                                np.argmax(lengths, axis=-1))
  # The decoder reconstructs from the predicted real capsule; the orphan's
  # slot of its input is zero.
  full = jnp.concatenate([out["class_caps"], jnp.ones((3, 1, 16))], axis=1)
  masked = losses.mask_capsules(full, out["predictions"])
  assert np.all(np.asarray(masked)[:, 10 * 16:] == 0)
  expected = model.apply({"params": params}, masked,
                         method=models.CapsNet.decode_masked)
  np.testing.assert_allclose(np.asarray(out["reconstructions"]),
                             np.asarray(expected), atol=1e-6)
  # The margin loss sees the orphan: 0.5 * (|v_orphan| - 0.1)^2 more.
  with_orphan = losses.margin_loss(out["lengths"], labels,
                                   orphan_lengths=out["orphan_lengths"])
  without = losses.margin_loss(out["lengths"], labels)
  np.testing.assert_allclose(np.asarray(with_orphan - without),
                             0.5 * (orphan - 0.1) ** 2, rtol=1e-5)


def test_float32_asks_for_full_precision_products_and_tf32_is_its_own_dtype():
  """JAX's GPU default for float32 products is TF32: compute_dtype=float32
  must set "highest", tf32 "tensorfloat32", bfloat16 nothing."""
  assert models.matmul_precision("float32") == "highest"
  assert models.matmul_precision("tf32") == "tensorfloat32"
  assert models.matmul_precision("bfloat16") is None
  assert models.array_dtype("tf32") == jnp.float32
  assert models.array_dtype("bfloat16") == jnp.bfloat16
  before = jax.config.jax_default_matmul_precision
  try:
    assert models.use_compute_dtype("tf32") == "tf32"
    assert jax.config.jax_default_matmul_precision == "tensorfloat32"
    assert models.use_compute_dtype("float32") == "float32"
    assert jax.config.jax_default_matmul_precision == "highest"
  finally:
    jax.config.update("jax_default_matmul_precision", before)


def test_deconv_decoder_starts_at_the_datasets_target_mean():
  """create_model passes the data's mean target pixel (MNIST 0.1307) to the
  deconv decoder, whose first reconstructions then sit there, not at 0.5."""
  config = default.get_config()
  config.decoder, config.model = "deconv", "tiny"
  model = models.create_model(config, (28, 28, 1), 10)
  assert model.decoder_output_mean == pytest.approx(0.1307)
  images = jax.random.uniform(jax.random.key(0), (4, 28, 28, 1))
  out, _ = model.init_with_output(jax.random.key(1), images)
  assert float(jnp.mean(out["reconstructions"])) == pytest.approx(0.1307, abs=0.01)
  config.dataset = "cifar10"  # unknown mean: the scheme's output bias
  assert models.create_model(config, (32, 32, 3), 10).decoder_output_mean is None
