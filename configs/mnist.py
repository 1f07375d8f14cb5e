"""CapsNet on MNIST: the authors' recipe, the PyTorch reference's, a smoke run.

  python main.py --config=configs/mnist.py --workdir=runs/mnist             # paper
  python main.py --config=configs/mnist.py:authors_full --workdir=runs/full
  python main.py --config=configs/mnist.py:reference --workdir=runs/mnist_ref
  python main.py --config=configs/mnist.py:smoke --workdir=/tmp/smoke \
      --config.idx_dir=../shared/data/mnist                                  # ~1 min

Add ``--config.idx_dir=../shared/data/mnist`` (a folder of MNIST IDX files)
where tfds cannot download.

paper (default): the authors' released code (Sabour et al. 2017): pixels in
[0, 1], all 60,000 training images shifted uniformly by up to 2 px, Adam 1e-3
with continuous exponential decay 0.96 every 2,000 steps, batch 128, alpha
0.0005, 3 routing iterations, 50 epochs (468 steps each): the authors'
recipe cut to 50 epochs (23,400 steps, 7.8% of their length; the rate is
still 6.2e-4 at the end).

authors_full: the same recipe at the authors' full length, their README's
`--max_steps=300000` (641 epochs of 468 steps; the rate ends at 2.2e-6, above
the floor of 1e-6). About 1.5 days on a 2-core CPU; on one GPU, chunks of
scripts/gpu_run.sh (docs/performance.md).

reference: the PyTorch reference project: inputs normalised with (0.1307,
0.3081), RandomAffine shifts, 54,000 training images (6,000 held out and
evaluated as the validation split), constant Adam 1e-3, reconstruction target
the per-batch min-max of the normalised input (the [0, 1] image for MNIST).
Its decoder study trains 25 epochs (421 steps each).

smoke: the tiny test model for 30 steps of batch 32 on MNIST and one
evaluation over the test set: a check that everything runs, not a result.

Measured results are in docs/results.md, generated from each run's
eval_history.jsonl by `python -m capsnet_jax.analysis.report`; how long a
run takes on a 2-core CPU and on one GPU: docs/performance.md.
"""

from configs import default

# The authors' README trains MNIST with --max_steps=300000.
AUTHORS_STEPS = 300_000


def get_config(variant: str = ""):
  config = default.get_config()
  config.dataset = "mnist"
  if variant in ("", "paper"):
    config.data_setup = "paper"
  elif variant == "authors_full":
    config.data_setup = "paper"
    config.num_train_steps = AUTHORS_STEPS
  elif variant == "reference":
    config.data_setup = "reference"
  elif variant == "smoke":
    config.data_setup = "paper"
    config.model = "tiny"
    config.primary_types = 4
    config.batch_size = 32
    config.eval_batch_size = 500
    config.num_train_steps = 30
    config.log_every_steps = 10
    config.num_summary_images = 2
    config.learning_rate = 3e-3
  else:
    raise ValueError(f"Unknown configs/mnist.py variant {variant!r}; valid: "
                     "paper (the default), authors_full, reference, smoke")
  return config
