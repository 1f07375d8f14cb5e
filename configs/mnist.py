"""CapsNet on MNIST, the reference setup (Sabour et al. 2017).

Train and evaluate (downloads MNIST through tfds)::

  python main.py --config=configs/mnist.py --workdir=runs/mnist

Offline, from a folder of MNIST IDX files::

  python main.py --config=configs/mnist.py --workdir=runs/mnist \
      --config.idx_dir=../shared/data/mnist

Recipe: Adam 1e-3 decayed by 0.96 every 2000 steps (the authors'), batch
128, alpha 0.0005, 3 routing iterations, random shifts of up to 2 px, 50
epochs. Measured on a 2-core AMD EPYC CPU (no GPU), full 10,000-image test set:

  150 steps (--config.num_train_steps=150): 97.13% (seed 0), 97.31% (seed 1),
  97.31% (seed 2); 160-280 s wall time each, including compilation and the
  final evaluation.

Longer runs and the decoder study are in README.md ("Results"), each with its
command.
"""

from configs import default


def get_config():
  config = default.get_config()
  config.dataset = "mnist"
  return config
