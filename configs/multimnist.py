"""CapsNet on MultiMNIST, the paper's setup (Sabour et al. 2017, section 6).

Train and evaluate (downloads MNIST through tfds, or reads IDX files)::

  python main.py --config=configs/multimnist.py --workdir=runs/multimnist \
      [--config.idx_dir=../shared/data/mnist]
  python main.py --config=configs/multimnist.py:smoke --workdir=/tmp/mm \
      --config.idx_dir=../shared/data/mnist                    # tiny, ~1 min

Data (capsnet_jax/data/multimnist.py): each example overlays two MNIST digits of
different classes from the same split, each padded to 36x36 and shifted by
up to 4 px per axis, added and clipped to [0, 1]. Training pairs are drawn
afresh every step from (seed, step); an "epoch" is 60,000 pairs (one per
training digit as the first digit, 468 steps of 128). The test set is a fixed
list of --config.multimnist_test_pairs pairs of the MNIST test split (default
10,000, each test digit once as the first digit; the paper used 10M, 1,000
per test digit).

Model: CapsNet on 36x36 inputs: conv1 36 -> 28, primary capsules 28 -> 10,
so 10x10x32 = 3,200 primary capsules; 3 routing iterations; FC decoder
512/1024/1296. 11,361,968 parameters (tests/test_multimnist.py derives it).

Loss: the margin loss with T_k = 1 for both digits' classes, plus alpha x
the sum over the two digits of the per-image SSE between each digit's own
shifted image and the decoder's reconstruction from that digit's capsule.
At evaluation the decoder reconstructs from the two longest capsules.
test_accuracy is the paper's rule: the two longest capsules are exactly the
two labels (paper: CapsNet 5.2% error, baseline CNN 8.1%);
test_partial_accuracy counts pairs with at least one of them.

Recipe, read from the authors' code (Sarasra/models research/capsules):
- Adam 1e-3, tf.train.exponential_decay(0.96, 2000) continuous, floored at
  1e-6 (models/model.py); batch 128 (experiment.py); 3 routing iterations;
  alpha 0.0005 for each digit's reconstruction (layers.reconstruction's
  balance_factor, one per target, summed). Their _margin_loss is half the
  paper's formula; we keep the paper's, as for MNIST.
- Length: the paper's training set is 60M pairs (1,000 per training digit);
  1,000 epochs of 60,000 pairs is that many (468,000 steps). The authors'
  README trains MNIST for 300,000 steps; neither says how long MultiMNIST
  trained.
- The authors' README generates the test split with --shift=6 --pad=4 (a
  digit may then lose its edge pixels); the paper says 4 px, which we use.

Measured on a 2-core CPU: see docs/results.md ("MultiMNIST"), generated
from the run's eval_history.jsonl by `python -m capsnet_jax.analysis.report`.

smoke: the tiny test model for 30 steps of batch 32 and 1,000 test pairs: a
check that everything runs, not a result.
"""

from configs import default


def get_config(variant: str = ""):
  config = default.get_config()
  config.dataset = "multimnist"
  config.data_setup = "paper"  # the only setup of multimnist
  config.multimnist_test_pairs = 10000
  config.batch_size = 128
  config.learning_rate = 1e-3
  config.lr_schedule = "exponential"
  config.lr_decay_rate = 0.96
  config.lr_decay_steps = 2000
  config.lr_min = 1e-6
  config.alpha = 0.0005
  config.routing_iterations = 3
  config.decoder = "fc"
  config.num_epochs = 1000  # 60,000 pairs each: the paper's 60M
  if variant in ("", "paper"):
    pass
  elif variant == "smoke":
    config.model = "tiny"
    config.primary_types = 4
    config.batch_size = 32
    config.eval_batch_size = 500
    config.multimnist_test_pairs = 1000
    config.num_train_steps = 30
    config.log_every_steps = 10
    config.num_summary_images = 2
    config.learning_rate = 3e-3
  else:
    raise ValueError(f"Unknown configs/multimnist.py variant {variant!r}; "
                     "valid: paper (the default), smoke")
  return config
