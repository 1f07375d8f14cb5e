"""Tests of Efficient-CapsNet (capsnet_jax/model/efficient.py): parameter counts,
its squash, self-attention routing, the model's call contract, registration,
the authors' recipe and a few training steps through train_and_evaluate."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from capsnet_jax.model import efficient
from capsnet_jax.model import models
from capsnet_jax.analysis import summary
from capsnet_jax.training import loop
from capsnet_jax.training import schedules
from capsnet_jax import experiment
from capsnet_jax import validation
from capsnet_jax.errors import ConfigError
from configs import default
from configs import mnist_efficient


def _count(tree):
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def _shapes(model, batch=1):
  return jax.eval_shape(lambda: model.init(
      {"params": jax.random.key(0)}, jnp.zeros((batch, *model.image_shape)),
      train=False))


# Trainable parameters of the MNIST model, by hand (k*k*Cin*Cout + Cout per
# convolution; BN: scale + bias per channel; 28 -> 24 -> 22 -> 20 -> 9 px):
#   conv0  5*5*1*32 + 32    =    832   bn0  2*32  =  64
#   conv1  3*3*32*64 + 64   = 18,496   bn1  2*64  = 128
#   conv2  3*3*64*64 + 64   = 36,928   bn2  2*64  = 128
#   conv3  3*3*64*128 + 128 = 73,856   bn3  2*128 = 256
#   stem = 130,112 + 576 = 130,688
#   primary: depthwise 9*9*1*128 + 128 = 10,496 (9x9x128 -> 1x1x128 = 16 x 8D)
#   class_caps: W 10*16*8*16 = 20,480 + bias 10*16*1 = 160 -> 20,640
#   encoder = 130,688 + 10,496 + 20,640 = 161,824: the paper's figure. Its
#     Table 2 counts no decoder (CapsNet appears as 6.8M, i.e. 20,992 +
#     5,308,672 + 1,474,720 without its 1.4M decoder), and Keras' summary of
#     their efficient_capsnet_graph reports these same trainable weights.
#   decoder: 160*512 + 512 = 82,432; 512*1024 + 1024 = 525,312;
#     1024*784 + 784 = 803,600 -> 1,411,344
#   total = 161,824 + 1,411,344 = 1,573,168
#   BN running means and variances: 2 * (32 + 64 + 64 + 128) = 576, state in
#     batch_stats, not parameters (Keras' "non-trainable params").
def test_parameter_counts_match_the_paper():
  variables = _shapes(efficient.EfficientCapsNetMNIST())
  params = variables["params"]
  assert _count(params["stem"]) == 130_688
  assert _count(params["primary"]) == 10_496
  assert _count(params["class_caps"]) == 20_640
  assert _count(params["decoder"]) == 1_411_344
  assert _count(params) - _count(params["decoder"]) == 161_824
  assert _count(params) == 1_573_168
  assert _count(variables["batch_stats"]) == 576
  # The authors' layouts: depthwise kernel, FCCaps W [K, N, in, out], b.
  assert params["primary"]["conv"]["kernel"].shape == (9, 9, 1, 128)
  assert params["class_caps"]["W"].shape == (10, 16, 8, 16)
  assert params["class_caps"]["bias"].shape == (10, 16, 1)
  counts = summary.summarize(params)
  assert counts["encoder_params"] == 161_824
  assert counts["total_params"] == 1_573_168


def test_squash_values_by_hand():
  s = jnp.array([[3.0, 4.0], [300.0, 400.0], [1e-3, 0.0], [0.0, 0.0]])
  v = np.asarray(efficient.squash(s))
  # (1 - exp(-|s|)) s / |s|: |s| = 5 -> 0.9932620530009145 * (0.6, 0.8).
  np.testing.assert_allclose(v[0], [0.5959572318005487, 0.7946096424007316],
                             rtol=1e-6)
  np.testing.assert_allclose(v[1], [0.6, 0.8], rtol=1e-6)  # exp(-500) = 0
  np.testing.assert_allclose(v[2], [0.000999500166624978, 0.0], rtol=1e-5)
  np.testing.assert_array_equal(v[3], [0.0, 0.0])
  # Against the authors' expression (1 - 1/(exp(n) + eps)) * s / (n + eps).
  x = np.random.default_rng(0).normal(size=(50, 8)) * np.logspace(-3, 1, 50)[:, None]
  n = np.linalg.norm(x, axis=-1, keepdims=True)
  theirs = (1 - 1 / (np.exp(n) + 10e-21)) * (x / (n + 10e-21))
  np.testing.assert_allclose(efficient.squash(jnp.asarray(x, jnp.float32)),
                             theirs, rtol=2e-5, atol=1e-9)
  # Finite gradients at 0 (tf.norm's are NaN) and past exp's overflow.
  for point in ([0.0, 0.0], [300.0, 400.0]):
    g = jax.jacfwd(efficient.squash)(jnp.array(point))
    assert np.all(np.isfinite(np.asarray(g)))


def test_routing_by_hand():
  # K = 2 output capsules, N = 2 inputs, D = 2. Output 0: u = (1, 0) twice,
  # A = [[1, 1], [1, 1]] / sqrt(2), row sums sqrt(2). Output 1: (0, 1) and
  # (0, -1), A = [[1, -1], [-1, 1]] / sqrt(2), row sums 0. Softmax over the
  # two OUTPUTS: c = sigmoid(sqrt(2)) = 0.8044296825069569 to output 0 and
  # 0.1955703174930431 to output 1 for both inputs (over the inputs instead
  # it would be 0.5 everywhere).
  u_hat = jnp.array([[[[1.0, 0.0], [1.0, 0.0]], [[0.0, 1.0], [0.0, -1.0]]]])
  bias = jnp.array([[[0.5], [0.0]], [[0.25], [0.0]]])  # [K, N, 1]
  v, c = efficient.self_attention_routing(u_hat, bias)
  np.testing.assert_allclose(c[0], [[0.8044296825069569, 0.1955703174930431]] * 2,
                             rtol=1e-6)
  # s_0 = (c + 0.5) (1, 0) + c (1, 0) = (2.108859365013914, 0), length
  # 1 - exp(-2.108859365013914) = 0.8786236664022501; s_1 = (c1 + 0.25) (0, 1)
  # + c1 (0, -1) = (0, 0.25), length 1 - exp(-0.25) = 0.22119921692859512.
  np.testing.assert_allclose(v[0], [[0.8786236664022501, 0.0],
                                    [0.0, 0.22119921692859512]], rtol=1e-6,
                             atol=1e-7)


def test_routing_matches_numpy_and_couplings_sum_to_one_over_outputs():
  rng = np.random.default_rng(0)
  b, n, k, din, d = 2, 5, 3, 4, 6
  u = rng.normal(size=(b, n, din)).astype(np.float32)
  w = rng.normal(size=(k, n, din, d)).astype(np.float32) * 0.5
  bias = rng.normal(size=(k, n, 1)).astype(np.float32) * 0.1
  layer = efficient.SelfAttentionCapsules(num_out=k, dim=d)
  v, c = layer.apply({"params": {"W": w, "bias": bias}}, jnp.asarray(u))
  v_ref = np.zeros((b, k, d))
  c_ref = np.zeros((b, n, k))
  for i in range(b):
    u_hat = np.einsum("ni,knid->knd", u[i], w)  # [K, N, D]
    logits = np.stack([(u_hat[j] @ u_hat[j].T / np.sqrt(d)).sum(axis=1)
                       for j in range(k)], axis=1)  # [N, K]
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    c_ref[i] = e / e.sum(axis=1, keepdims=True)
    for j in range(k):
      s = ((c_ref[i, :, j:j + 1] + bias[j]) * u_hat[j]).sum(axis=0)
      norm = np.linalg.norm(s)
      v_ref[i, j] = (1 - np.exp(-norm)) * s / norm
  np.testing.assert_allclose(c, c_ref, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(v, v_ref, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(np.sum(c, axis=-1), 1.0, rtol=1e-6)
  assert not np.allclose(np.sum(c, axis=1), 1.0)


def test_stem_applies_batch_norm_after_relu():
  # Their order, Conv -> ReLU -> BN: in training each channel of the output is
  # batch-normalised (mean 0, some values negative); BN before the ReLU would
  # leave only values >= 0.
  stem = efficient.Stem(features=(4, 4, 4, 8))
  x = jax.random.uniform(jax.random.key(0), (8, 28, 28, 1))
  variables = stem.init(jax.random.key(1), x)
  y, _ = jax.jit(lambda v: stem.apply(v, x, train=True,
                                      mutable=["batch_stats"]))(variables)
  assert y.shape == (8, 9, 9, 8)
  np.testing.assert_allclose(np.mean(y, axis=(0, 1, 2)), 0.0, atol=1e-4)
  assert float(y.min()) < -0.1


def test_full_model_output_shapes():
  model = efficient.EfficientCapsNetMNIST()
  variables = _shapes(model)
  out, updates = jax.eval_shape(lambda v: model.apply(
      v, jnp.zeros((3, 28, 28, 1)), jnp.zeros(3, jnp.int32), train=True,
      mutable=["batch_stats"]), variables)
  assert {k: x.shape for k, x in out.items()} == {
      "primary_caps": (3, 16, 8), "class_caps": (3, 10, 16),
      "coupling": (3, 16, 10), "lengths": (3, 10), "scores": (3, 10),
      "predictions": (3,), "reconstructions": (3, 28, 28, 1)}
  assert set(updates) == {"batch_stats"}


def test_tiny_model_contract():
  model = efficient._EfficientCapsNetTiny()  # pylint: disable=protected-access
  xla = model.clone(conv_impl="xla")
  images = jax.random.uniform(jax.random.key(0), (4, 28, 28, 1))
  labels = jnp.array([1, 2, 3, 4])
  variables = jax.jit(lambda: model.init({"params": jax.random.key(1)},
                                         images, train=False))()

  @jax.jit  # One compilation for every call below.
  def run(variables):
    out, updates = model.apply(variables, images, labels, train=True,
                               mutable=["batch_stats"])
    by_label, _ = model.apply(variables, out["class_caps"], labels, train=True,
                              mutable=["batch_stats"],
                              method=efficient.EfficientCapsNet.decode)
    ev = model.apply(variables, images, labels, train=False)
    masked = jax.nn.one_hot(ev["predictions"], 10)[..., None] * ev["class_caps"]
    by_prediction = model.apply(variables, masked.reshape(4, -1),
                                method=efficient.EfficientCapsNet.decode_masked)
    half = model.apply(variables, images[:2], train=False)["lengths"]
    xla_lengths = xla.apply(variables, images, train=False)["lengths"]
    grads = jax.grad(lambda p: jnp.sum(model.apply(
        {**variables, "params": p}, jnp.zeros((2, 28, 28, 1)), labels[:2],
        train=True, mutable=["batch_stats"])[0]["lengths"]))(variables["params"])
    return out, updates, by_label, ev, by_prediction, half, xla_lengths, grads

  out, updates, by_label, ev, by_prediction, half, xla_lengths, grads = run(
      variables)
  assert out["primary_caps"].shape == (4, 4, 8)  # 32 channels / 8
  assert out["coupling"].shape == (4, 4, 10)
  np.testing.assert_allclose(np.sum(out["coupling"], axis=-1), 1.0, rtol=1e-6)
  recon = np.asarray(out["reconstructions"])
  assert recon.shape == (4, 28, 28, 1) and recon.min() >= 0 and recon.max() <= 1
  assert np.all(np.asarray(out["lengths"]) < 1)
  # Training reconstructs from the true label's capsule, evaluation from the
  # predicted one, through decode / decode_masked as CapsNet's.
  np.testing.assert_allclose(recon, by_label, atol=1e-6)
  np.testing.assert_allclose(ev["reconstructions"], by_prediction, atol=1e-6)
  # Batch statistics move in training; evaluation uses the running ones
  # (batch-size independent).
  assert not np.allclose(updates["batch_stats"]["stem"]["bn0"]["mean"],
                         variables["batch_stats"]["stem"]["bn0"]["mean"])
  np.testing.assert_allclose(ev["lengths"][:2], half, atol=1e-6)
  # The patch-product convolutions (CPU default) equal XLA's.
  np.testing.assert_allclose(ev["lengths"], xla_lengths, atol=1e-5)
  assert all(np.all(np.isfinite(np.asarray(g))) for g in jax.tree.leaves(grads))


def test_registration_and_summary(capsys):
  config = mnist_efficient.get_config()
  model = experiment.resolve(config).model
  assert isinstance(model, efficient.EfficientCapsNet)
  assert model.num_classes == 10 and model.conv_impl == "auto"
  config.model = "efficientcaps"
  with pytest.raises(ValueError, match="efficient_capsnet"):
    models.create(config.model)
  with pytest.raises(ConfigError, match="efficient_capsnet"):
    validation.validate_config(config)
  config = mnist_efficient.get_config()
  config.dataset = "cifar10"
  with pytest.raises(ConfigError, match="for mnist"):
    validation.validate_config(config)
  counts = summary.print_summary(mnist_efficient.get_config())
  last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert last == counts
  assert (last["total_params"], last["encoder_params"], last["decoder_params"],
          last["non_trainable_params"]) == (1_573_168, 161_824, 1_411_344, 576)


def test_recipe_learning_rate():
  config = mnist_efficient.get_config()
  validation.validate_config(config)
  assert (config.batch_size, config.num_epochs, config.alpha) == (16, 150, 0.0005)
  lr = schedules.learning_rate(experiment.resolve(config))
  # 5e-4 x 0.97^epoch, 3,750 steps an epoch, floored at 5e-5 from epoch 76
  # (5e-4 x 0.97^76 = 4.94e-5).
  for step, expected in [(0, 5e-4), (3749, 5e-4), (3750, 4.85e-4),
                         (3750 * 75, 5.0916e-5), (3750 * 76, 5e-5),
                         (3750 * 149, 5e-5)]:
    assert float(lr(step)) == pytest.approx(expected, rel=1e-4), step


def test_training_steps_reduce_the_loss(idx_dir, tmp_path):
  from capsnet_jax.analysis import curves  # pylint: disable=g-import-not-at-top
  config = default.get_config()
  # XLA's convolutions: this test took 59 s with them and 71 s with the CPU
  # default (2-core AMD EPYC, a training run going); test_tiny_model_contract
  # compares the two.
  config.update(model="efficient_tiny", data_setup="efficient",
                idx_dir=str(idx_dir), batch_size=32, num_train_steps=24,
                log_every_steps=4, num_summary_images=2, learning_rate=3e-3,
                conv_impl="xla")
  results = loop.train_and_evaluate(config, str(tmp_path))
  # stem 208 + 16 + 584 + 16 + 584 + 16 + 2,336 + 64 = 3,824; primary
  # 9*9*32 + 32 = 2,624; class caps 10*4*8*16 + 40 = 5,160; decoder
  # 160*16 + 16 + 16*32 + 32 + 32*784 + 784 = 28,992.
  assert results["num_params"] == 40_600
  assert results["step"] == 24
  steps, losses = curves.from_events(str(tmp_path))["train_loss"]
  np.testing.assert_array_equal(steps, [4, 8, 12, 16, 20, 24])
  assert np.all(np.isfinite(losses))
  assert losses[-1] < 0.8 * losses[0], losses
  # The figures work for this routing family too (primary capsules without
  # a grid of types: 4 capsules in the tiny model).
  from capsnet_jax.analysis import visualize  # pylint: disable=g-import-not-at-top
  config.update(visualize_rotation_step=90, visualize_primary_steps=5,
                visualize_primary_examples=64, visualize_num_images=4)
  summary = visualize.visualize(config, str(tmp_path))
  for name in ("reconstructions", "rotation", "perturbation", "primary_caps"):
    assert os.path.getsize(tmp_path / "figures" / f"{name}.png") > 1000, name
  assert summary["rotation_angles"] == [-180, -90, 0, 90, 180]
