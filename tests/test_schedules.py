"""The learning rate and reconstruction weight schedules
(capsnet_jax.training.schedules) against values computed by hand. That a
run's steps use them end to end is test_tricks.py's."""

import jax
import pytest

from capsnet_jax import experiment
from capsnet_jax.training import schedules
from configs import default


def _exp(**fields):
  config = default.get_config()
  config.update(fields)
  return experiment.resolve(config, "train")


@pytest.mark.parametrize("setup,kind,expected", [
    # step -> learning rate, by hand: 1e-3 * 0.96 ** (step / 2000);
    # 0.96 ** 0.5 = 0.9797959, 0.96 ** 2.5 = 0.9216 * 0.9797959 = 0.9029799.
    ("paper", "auto", {0: 1e-3, 1000: 9.797959e-4, 2000: 9.6e-4,
                       5000: 9.029799e-4}),
    # The paper recipe's floor of 1e-6 (the authors' tf.maximum): 0.96 **
    # 150 = 2.191215e-3 is above it at step 300,000; 0.96 ** 200 = 2.846077e-4
    # is below it at 400,000. The reference recipe has no floor.
    ("paper", "auto", {300_000: 2.191215e-6, 400_000: 1e-6}),
    ("reference", "exponential", {400_000: 2.846077e-7}),
    ("reference", "auto", {0: 1e-3, 1000: 1e-3, 50000: 1e-3}),
    # Staircase: 1e-3 * 0.96 ** floor(step / 2000); 0.96^2 = 0.9216.
    ("reference", "staircase", {1999: 1e-3, 2000: 9.6e-4, 5000: 9.216e-4}),
    ("paper", "constant", {0: 1e-3, 9000: 1e-3}),
])
def test_learning_rate(setup, kind, expected):
  schedule = schedules.learning_rate(_exp(data_setup=setup, lr_schedule=kind))
  for step, lr in expected.items():
    assert float(schedule(step)) == pytest.approx(lr, rel=1e-5), step


def test_learning_rate_is_constant_without_decay_steps_or_rate():
  for fields in ({"lr_decay_steps": 0}, {"lr_decay_rate": 1.0}):
    schedule = schedules.learning_rate(_exp(data_setup="paper", **fields))
    assert float(schedule(100_000)) == pytest.approx(1e-3, rel=1e-6), fields


# The reference's get_alpha(epoch), alpha = 0.0005, T = 8, typed from a
# calculator: (tanh(e / 8 - pi) + 1) / 2 and tanh(e / 16).
TANH_SHIFTED = {0: 9.319809e-07, 8: 6.805414e-06, 25: 2.458522e-04,
                50: 4.990042e-04}
TANH = {0: 0.0, 8: 2.310586e-04, 16: 3.807971e-04, 48: 4.975274e-04}


@pytest.mark.parametrize("name,alias,expected", [
    ("tanh_shifted", "1", TANH_SHIFTED), ("tanh", "2", TANH),
    ("none", "none", {0: 5e-4, 8: 5e-4, 300: 5e-4})])
def test_annealed_alpha_hand_computed(name, alias, expected):
  for epoch, value in expected.items():
    for schedule in (name, alias):
      got = float(schedules.annealed_alpha(5e-4, schedule, epoch, 8.0))
      assert got == pytest.approx(value, rel=1e-5, abs=1e-12), (schedule, epoch)


def test_annealed_alpha_refuses_an_unknown_schedule():
  with pytest.raises(ValueError, match="Unknown alpha_schedule 'cosine'"):
    schedules.annealed_alpha(5e-4, "cosine", 1)


def test_alpha_takes_the_epoch_from_the_step():
  fn = schedules.alpha(_exp(alpha_schedule="tanh"), steps_per_epoch=100)
  # Steps 0-99 are epoch 0 (the reference's first epoch is 0), 800 is 8;
  # epoch 1: 0.0005 * tanh(1 / 16) = 0.0005 * 0.06241881.
  for step, value in {0: 0.0, 99: 0.0, 100: 0.0005 * 0.06241881,
                      800: TANH[8], 899: TANH[8]}.items():
    assert float(fn(step)) == pytest.approx(value, rel=1e-5, abs=1e-12), step
  fn = schedules.alpha(_exp(alpha_schedule="tanh", alpha_fractional_epochs=True),
                       steps_per_epoch=100)
  # Step 50 is epoch 0.5: 0.0005 * tanh(0.5 / 16) = 0.0005 * 0.03123983.
  assert float(fn(50)) == pytest.approx(0.0005 * 0.03123983, rel=1e-5)
  assert float(jax.jit(fn)(800)) == pytest.approx(TANH[8], rel=1e-5)
  # The config's alpha is the weight the schedule scales.
  fn = schedules.alpha(_exp(alpha=0.002), steps_per_epoch=100)
  assert float(fn(12345)) == pytest.approx(0.002, rel=1e-6)
