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

The full recipe (the first command above), measured so far: 98.74% after
epoch 1, 99.10% after epoch 2, 99.39% after epoch 3, 99.49% after epoch 9,
99.50% after epochs 11, 13 and 14 (7.0-7.3 minutes per epoch on that CPU,
evaluation included); the paper's 99.75% needs about 113 epochs (about 13.5
hours there), which has not fitted a CPU session yet. Decoder study
(--config.decoder=deconv, --config.batch_norm=True), one epoch each: FC
98.74%, FC+BN 98.67%, deconv 98.75%, deconv+BN 98.71%.
README.md ("Results") has every row with its command, losses and times.
"""

from configs import default


def get_config():
  config = default.get_config()
  config.dataset = "mnist"
  return config
