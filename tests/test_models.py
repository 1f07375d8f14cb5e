"""Tests of the assembled model: parameter counts, batch norm, options."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from capsnet_jax import experiment
from capsnet_jax.model import masking
from capsnet_jax.model import models
from capsnet_jax.training import losses
from configs import default
from conftest import ROOT, subprocess_env

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


# The behavioural tests' model: the CapsNet's structure at toy sizes (22 x 22
# inputs, the smallest the deconv decoder lays out; conv1 5 x 5 with 8
# filters -> 18 x 18; primary capsules 5 x 5 stride 2 -> 7 x 7 x 2 types =
# 98 capsules of 4D; 4 classes of 4D; FC decoder 16 -> 16 -> 32 -> 484), on
# XLA's convolutions (test_conv compares the other forms), each test one
# jitted function: compiled in about a second.
TINY = dict(num_classes=4, image_shape=(22, 22, 1), conv_filters=8,
            conv_kernel=5, primary_types=2, primary_dim=4, primary_kernel=5,
            class_dim=4, decoder_hidden=(16, 32), conv_impl="xla")
NUM_CAPS = 7 * 7 * 2


def _tiny(**kw):
  return models.CapsNet(**{**TINY, **kw})


def _images(n, seed=0):
  return jax.random.uniform(jax.random.key(seed), (n, 22, 22, 1))


def _loss(model, variables, images, labels, train):
  out, updates = model.apply(variables, images, labels, train=train,
                             mutable=["batch_stats"])
  loss = jnp.mean(losses.margin_loss(out["lengths"], labels)
                  + 0.0005 * losses.reconstruction_sse(out["reconstructions"],
                                                       images))
  return loss, updates


def test_outputs_masking_and_gradients_at_zero_input():
  """Training reconstructs from the true label's capsule, evaluation from
  the predicted one; an all-zero input (every capsule of length 0) has
  finite gradients."""
  model = _tiny()
  images, labels = _images(3), jnp.array([1, 2, 3])
  variables = jax.jit(model.init)(jax.random.key(1), images)

  @jax.jit
  def run(variables):
    out = model.apply(variables, images, labels, train=True)
    by_label = model.apply(variables, out["class_caps"], labels,
                           method=models.CapsNet.decode)
    out_eval = model.apply(variables, images, labels, train=False)
    by_prediction = model.apply(variables, out_eval["class_caps"],
                                out_eval["predictions"],
                                method=models.CapsNet.decode)
    zeros = jnp.zeros((2, 22, 22, 1))
    grads = jax.grad(lambda p: _loss(model, {"params": p}, zeros, labels[:2],
                                     True)[0])(variables["params"])
    return out, by_label, out_eval, by_prediction, grads

  out, by_label, out_eval, by_prediction, grads = run(variables)
  assert out["primary_caps"].shape == (3, NUM_CAPS, 4)
  assert out["class_caps"].shape == (3, 4, 4)
  assert out["coupling"].shape == (3, NUM_CAPS, 4)
  assert out["lengths"].shape == out_eval["lengths"].shape == (3, 4)
  assert out["reconstructions"].shape == (3, 22, 22, 1)
  np.testing.assert_array_equal(np.asarray(out_eval["predictions"]),
                                np.argmax(np.asarray(out_eval["lengths"]), -1))
  np.testing.assert_allclose(np.asarray(out["reconstructions"]),
                             np.asarray(by_label), atol=1e-6)
  np.testing.assert_allclose(np.asarray(out_eval["reconstructions"]),
                             np.asarray(by_prediction), atol=1e-6)
  # The labels are not all the predictions, so the two differ somewhere.
  assert not np.array_equal(np.asarray(out_eval["predictions"]),
                            np.asarray(labels))
  assert not np.allclose(np.asarray(out["reconstructions"]),
                         np.asarray(out_eval["reconstructions"]))
  for g in jax.tree.leaves(grads):
    assert np.all(np.isfinite(np.asarray(g)))


# The loss of the 8th Adam step (3e-3) on 16 random images with random
# labels, relative to the first step's: 0.444 (0.830 -> 0.369) without and
# 0.501 (0.833 -> 0.417) with batch norm (2-core Intel Xeon). The bounds sit
# a few points above. (The deconv decoder learns in test_decoders, on real
# digits; its gradients equal XLA's in test_conv. Trained here, its 9 x 9
# transposed convolutions of 32 and 64 channels would cost more than the
# rest of this module.)
LOSS_RATIOS = {False: 0.50, True: 0.56}


@pytest.mark.parametrize("batch_norm", [False, True])
def test_tiny_train_steps_lower_the_loss(batch_norm):
  model = _tiny(batch_norm=batch_norm)
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.uniform(size=(16, 22, 22, 1)), jnp.float32)
  labels = jnp.asarray(rng.integers(0, 4, size=16))
  variables = jax.jit(model.init)(jax.random.key(0), images)
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

  losses_ = []
  for _ in range(8):
    params, new_stats, opt_state, loss = step(params, stats, opt_state)
    if batch_norm:  # Running statistics move in training.
      assert not np.allclose(np.asarray(jax.tree.leaves(new_stats)[0]),
                             np.asarray(jax.tree.leaves(stats)[0]))
    stats = new_stats
    losses_.append(float(loss))
  assert losses_[-1] < LOSS_RATIOS[batch_norm] * losses_[0], losses_
  if batch_norm:
    # Evaluation uses the running statistics: deterministic, no mutation, and
    # batch-size independent.
    v = {"params": params, "batch_stats": stats}
    lengths = jax.jit(lambda v, x: model.apply(v, x, train=False)["lengths"])
    np.testing.assert_allclose(np.asarray(lengths(v, images)[:4]),
                               np.asarray(lengths(v, images[:4])), atol=1e-5)


def test_core_library_imports_without_tensorflow():
  # The model, the compiled steps, IDX input, checkpoints, inference and the
  # benchmark's imports must not pull in TensorFlow (GPU images may not have
  # it).
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  code = ("import sys\n"
          "from capsnet_jax import experiment, cli\n"
          "from capsnet_jax.model import models, conv, routing, decoders\n"
          "from capsnet_jax.data import augment, idx, input_pipeline\n"
          "from capsnet_jax.training import loop, losses, state, steps\n"
          "from capsnet_jax.workdir import checkpoints, record\n"
          "from capsnet_jax.inference import trained\n"
          "bad = sorted(m for m in sys.modules\n"
          "             if m.split('.')[0] in ('tensorflow', 'tensorflow_datasets'))\n"
          "assert not bad, bad[:5]\n"
          "assert 'capsnet_jax.training.loop' in sys.modules\n")
  result = subprocess.run([sys.executable, "-c", code], cwd=ROOT,
                          env=subprocess_env(), capture_output=True, text=True,
                          check=False)
  assert result.returncode == 0, result.stderr[-2000:]


def test_bfloat16_compute_keeps_float32_parameters_and_capsules():
  """On the CPU's default convolutions (bfloat16 products through
  conv.matmul_bf16), as a bfloat16 run on the CPU computes."""
  images = _images(4)
  labels = jnp.array([0, 1, 2, 3])
  model32 = _tiny(conv_impl="auto")
  model16 = _tiny(conv_impl="auto", dtype=jnp.bfloat16)
  variables = jax.jit(model32.init)(jax.random.key(1), images)
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(variables))

  @jax.jit
  def run(variables):
    grads = jax.grad(lambda p: _loss(model16, {"params": p}, images, labels,
                                     True)[0])(variables["params"])
    return (model32.apply(variables, images, labels),
            model16.apply(variables, images, labels), grads)

  out32, out16, grads = run(variables)
  for key in ("primary_caps", "class_caps", "coupling", "lengths",
              "reconstructions"):
    assert out16[key].dtype == jnp.float32, key
  # Same parameters, lower-precision convolutions: close, not equal. The
  # untrained model's lengths are 4e-5 to 1.4e-4, so the error is measured
  # relative to them. bfloat16 keeps 8 significant bits: each rounding is
  # within u = 2^-8 (0.39%) relative. The path rounds at about 8 places
  # (input, conv1 kernel and output, primary kernel and output, u, W,
  # u_hat), so 8u = 3.1% is a first-order worst case; independent roundings
  # add like a random walk (sqrt(8) u = 1.1%) and routing averages 98
  # predictions. 4u = 1.6% bounds it (measured: 0.69% for lengths, 0.90% for
  # class capsules, 2-core Intel Xeon), and a median of at least u/16 (the
  # measured median is 0.28%) shows bfloat16 really ran
  # (float32 alone differs by ~1e-7 relative).
  u = 2.0 ** -8
  l16, l32 = np.asarray(out16["lengths"]), np.asarray(out32["lengths"])
  assert 1e-5 < float(l32.min()) and float(l32.max()) < 1e-3  # 4e-5 - 1.4e-4
  rel_lengths = np.abs(l16 - l32) / l32
  v16, v32 = np.asarray(out16["class_caps"]), np.asarray(out32["class_caps"])
  rel_caps = (np.linalg.norm(v16 - v32, axis=-1)
              / np.linalg.norm(v32, axis=-1))
  assert float(rel_lengths.max()) < 4 * u, rel_lengths.max()
  assert float(rel_caps.max()) < 4 * u, rel_caps.max()
  assert float(np.median(rel_lengths)) > u / 16, np.median(rel_lengths)
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
  config = default.get_config()
  config.leaky_routing, config.leaky_variant = True, variant
  model = experiment.resolve(config).model
  assert (model.leaky_routing, model.orphan_capsule) == (leaky, orphan)
  config.leaky_routing = False
  model = experiment.resolve(config).model
  assert (model.leaky_routing, model.orphan_capsule) == (False, False)


def test_orphan_capsule_is_left_out_of_predictions_and_outputs():
  model = _tiny(orphan_capsule=True)
  images, labels = _images(3), jnp.array([1, 2, 3])
  params = jax.jit(model.init)(jax.random.key(1), images)["params"]
  assert params["class_caps"]["W"].shape[1] == 5
  assert params["decoder"]["dense0"]["kernel"].shape[0] == 5 * 4
  # A large orphan bias makes the orphan the longest capsule of every image.
  bias = params["class_caps"]["bias"].at[4].set(5.0)
  params = {**params, "class_caps": {**params["class_caps"], "bias": bias}}

  @jax.jit
  def run(params):
    out = model.apply({"params": params}, images, train=False)
    # The decoder reconstructs from the predicted real capsule; the
    # orphan's slot of its input is zero.
    full = jnp.concatenate([out["class_caps"], jnp.ones((3, 1, 4))], axis=1)
    masked = masking.mask_capsules(full, out["predictions"])
    expected = model.apply({"params": params}, masked,
                           method=models.CapsNet.decode_masked)
    return out, masked, expected

  out, masked, expected = run(params)
  assert out["lengths"].shape == (3, 4)
  assert out["class_caps"].shape == (3, 4, 4)
  assert out["coupling"].shape == (3, NUM_CAPS, 4)
  orphan = np.asarray(out["orphan_lengths"])
  lengths = np.asarray(out["lengths"])
  assert np.all(orphan > 0.99) and np.all(orphan[:, None] > lengths)
  np.testing.assert_array_equal(np.asarray(out["predictions"]),
                                np.argmax(lengths, axis=-1))
  assert np.all(np.asarray(masked)[:, 4 * 4:] == 0)
  np.testing.assert_allclose(np.asarray(out["reconstructions"]),
                             np.asarray(expected), atol=1e-6)
  # The margin loss sees the orphan: 0.5 * (|v_orphan| - 0.1)^2 more.
  with_orphan = losses.margin_loss(out["lengths"], labels,
                                   orphan_lengths=out["orphan_lengths"])
  without = losses.margin_loss(out["lengths"], labels)
  np.testing.assert_allclose(np.asarray(with_orphan - without),
                             0.5 * (orphan - 0.1) ** 2, rtol=1e-5)


def test_deconv_decoder_starts_at_the_datasets_target_mean():
  """The experiment passes the data's mean target pixel (MNIST 0.1307) to
  the deconv decoder, whose first reconstructions then sit there, not at
  0.5 (the scheme's zero output bias)."""
  config = default.get_config()
  config.decoder, config.model = "deconv", "tiny"
  # The reference setup starts at its init's output bias (PyTorch's default,
  # model.py:224); the others, or decoder_output_bias=data_mean, at the mean.
  assert config.data_setup == "reference"
  assert experiment.resolve(config).model.decoder_output_mean is None
  config.decoder_output_bias = "data_mean"
  assert experiment.resolve(config).model.decoder_output_mean == (
      pytest.approx(0.1307))
  config.decoder_output_bias = "auto"
  config.data_setup = "paper"
  model = experiment.resolve(config).model
  assert model.decoder_output_mean == pytest.approx(0.1307)
  config.decoder_output_bias = "init"
  assert experiment.resolve(config).model.decoder_output_mean is None
  config.decoder_output_bias = "data_mean"
  # The decoder alone, on masked capsules of length 0.9.
  masked = 0.9 * jax.nn.one_hot(jnp.arange(4), 16)
  init = jax.jit(lambda m: m.init_with_output(
      jax.random.key(1), masked, method=models.CapsNet.decode_masked)[0],
                 static_argnums=0)
  mean = lambda m: float(jnp.mean(init(m)))
  assert mean(model.clone(**TINY)) == pytest.approx(0.1307, abs=0.01)
  assert mean(model.clone(**TINY, decoder_output_mean=None)) == pytest.approx(
      0.5, abs=0.01)
  config.dataset = "cifar10"  # unknown mean: the scheme's output bias
  assert experiment.resolve(config).model.decoder_output_mean is None
