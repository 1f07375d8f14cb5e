"""CapsNet on MNIST, the reference setup (Sabour et al. 2017).

Train and evaluate (downloads MNIST through tfds)::

  python main.py --config=configs/mnist.py --workdir=runs/mnist

Offline, from a folder of MNIST IDX files::

  python main.py --config=configs/mnist.py --workdir=runs/mnist \
      --config.idx_dir=../shared/data/mnist

Measured results are in README.md ("Results"), each with its command.
"""

from configs import default


def get_config():
  config = default.get_config()
  config.dataset = "mnist"
  return config
