"""The learning rate and the reconstruction weight, as functions of the step.

Synopsis::

  lr = schedules.learning_rate(exp)          # optax schedule: step -> rate
  alpha = schedules.alpha(exp, steps_per_epoch)
  alpha(step)                                # the weight of step ``step``

Both depend only on the step, so a resumed run uses exactly the values of an
uninterrupted one.
"""

import math
from typing import Callable

import jax
import jax.numpy as jnp
import optax

from capsnet_jax import experiment
from capsnet_jax import validation

ALPHA_SCHEDULES = validation.ALPHA_SCHEDULES
_ALPHA_ALIASES = {"1": "tanh_shifted", "2": "tanh"}


def learning_rate(exp: experiment.Experiment) -> optax.Schedule:
  """The resolved lr_schedule: exponential: learning_rate * lr_decay_rate **
  (step / lr_decay_steps), as the authors' tf.train.exponential_decay;
  staircase: the exponent rounded down; constant (also when lr_decay_steps
  is 0 or the rate 1). Decayed rates stop at lr_min (0: no floor)."""
  config = exp.config
  if (exp.lr_schedule == "constant" or config.lr_decay_steps <= 0 or
      config.lr_decay_rate == 1.0):
    return optax.constant_schedule(config.learning_rate)
  return optax.exponential_decay(config.learning_rate, config.lr_decay_steps,
                                 config.lr_decay_rate,
                                 staircase=exp.lr_schedule == "staircase",
                                 end_value=exp.lr_min or None)


def annealed_alpha(alpha: float, schedule: str, epoch, temperature: float = 8.0):
  """The reference's get_alpha(epoch) (its --anneal none|1|2, T = 8 epochs).

  none: alpha.
  tanh_shifted ("1"): alpha * (tanh(epoch / T - pi) + 1) / 2, near 0 for the
    first epochs, alpha / 2 at epoch pi * T (25.1 for T = 8), then alpha.
  tanh ("2"): alpha * tanh(epoch / (2 T)), 0 at epoch 0, 0.76 alpha at 2 T.

  ``epoch`` may be a Python number or a traced array (inside jit).
  """
  schedule = _ALPHA_ALIASES.get(schedule, schedule)
  if schedule == "none":
    return alpha * jnp.ones_like(jnp.asarray(epoch, jnp.float32))
  epoch = jnp.asarray(epoch, jnp.float32)
  if schedule == "tanh_shifted":
    # (tanh(x) + 1) / 2 = sigmoid(2x), without float32's cancellation in
    # 1 + tanh(x) near tanh = -1 (the first epochs).
    return alpha * jax.nn.sigmoid(2.0 * (epoch / temperature - math.pi))
  if schedule == "tanh":
    return alpha * jnp.tanh(epoch / (2.0 * temperature))
  raise ValueError(f"Unknown alpha_schedule {schedule!r}; valid: "
                   f"{ALPHA_SCHEDULES}")


def alpha(exp: experiment.Experiment, steps_per_epoch: int
          ) -> Callable[..., jax.Array]:
  """step -> the reconstruction weight of optimisation step ``step`` (0-based).

  The epoch is derived from the step, never counted, so a resumed run uses
  exactly the weights of an uninterrupted one (the reference restarts its
  epoch count on resume): epoch = step // steps_per_epoch, the whole epoch
  index the reference passes to get_alpha (its first epoch is 0), or
  step / steps_per_epoch with alpha_fractional_epochs, which lets a run
  shorter than a few epochs see the schedule's shape.
  """
  config = exp.config
  schedule = config.get("alpha_schedule", "none")
  temperature = float(config.get("alpha_temperature", 8.0))
  fractional = bool(config.get("alpha_fractional_epochs", False))
  weight = float(config.alpha)
  steps_per_epoch = max(int(steps_per_epoch), 1)

  def fn(step):
    step = jnp.asarray(step, jnp.int32)
    if fractional:
      epoch = step.astype(jnp.float32) / steps_per_epoch
    else:
      epoch = step // steps_per_epoch
    return annealed_alpha(weight, schedule, epoch, temperature)

  return fn
