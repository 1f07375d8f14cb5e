"""Train, evaluate, summarise and visualise CapsNet.

  python main.py --config=configs/mnist.py --workdir=runs/mnist [--mode=train]
  python main.py --config=configs/mnist.py --workdir=runs/mnist --mode=eval
  python main.py --config=configs/mnist.py --mode=summary
  python main.py --config=configs/mnist.py --workdir=runs/mnist --mode=visualize

Any config field can be overridden with --config.NAME=VALUE (configs/default.py
lists them). See README.md.
"""

import sys

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from capsnet_jax import errors
from capsnet_jax import validation

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Training configuration.",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs, results.")
flags.DEFINE_enum("mode", "train", validation.MODES, "What to do.")
flags.DEFINE_string("coordinator_address", None,
                    "HOST:PORT of process 0, for multi-process runs.")
flags.DEFINE_integer("num_processes", None, "Number of processes.")
flags.DEFINE_integer("process_id", None, "This process's index.")
flags.mark_flags_as_required(["config"])


def _initialize_distributed():
  if FLAGS.coordinator_address or FLAGS.num_processes:
    if jax.config.jax_platforms in (None, "", "cpu") or "cpu" in str(
        jax.config.jax_platforms):
      jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=FLAGS.coordinator_address,
                               num_processes=FLAGS.num_processes,
                               process_id=FLAGS.process_id)
  else:
    try:  # A cluster JAX detects by itself (SLURM, TPU pods); else no-op.
      jax.distributed.initialize()
    except (ValueError, RuntimeError):
      pass


def run(mode: str, config, workdir: str | None):
  # Imported here so that --help and flag errors stay fast.
  if mode == "summary":
    from capsnet_jax import summary  # pylint: disable=g-import-not-at-top
    return summary.print_summary(config)
  from capsnet_jax import train  # pylint: disable=g-import-not-at-top
  if not workdir:
    raise errors.ConfigError(f"--mode={mode} needs --workdir")
  if mode == "train":
    return train.train_and_evaluate(config, workdir)
  if mode == "eval":
    return train.evaluate_checkpoint(config, workdir)
  if mode == "ensemble":
    from capsnet_jax import ensemble  # pylint: disable=g-import-not-at-top
    return ensemble.evaluate_ensemble(config, workdir)
  from capsnet_jax import visualize  # pylint: disable=g-import-not-at-top
  return visualize.visualize(config, workdir)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  try:
    if FLAGS.mode != "summary":
      _initialize_distributed()
      logging.info("JAX process %d of %d; %d local / %d global devices (%s)",
                   jax.process_index(), jax.process_count(),
                   jax.local_device_count(), jax.device_count(),
                   jax.devices()[0].platform)
    run(FLAGS.mode, FLAGS.config, FLAGS.workdir)
  except errors.UserError as e:
    sys.exit(f"error: {e}")


if __name__ == "__main__":
  app.run(main)
