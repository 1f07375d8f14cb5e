"""CapsNet on CIFAR10 in the authors' released setup (one ensemble member).

  python main.py --config=configs/cifar10_paper.py --workdir=runs/cifar10_paper_s0 \
      --config.seed=0

As research/capsules trains it (REFERENCE.md, "Recipes side by side"):
random 24x24 crops, horizontal flips, brightness (max delta 63/255) and
contrast (0.2-1.8) jitter, per-image standardisation at train and test time
(centre crop at test); conv1 and the primary capsules with SAME padding and
64 primary types, so 12 x 12 x 64 = 9,216 primary capsules; leaky routing;
no reconstruction loss (alpha 0; the decoder is still built and reported,
24,855,392 parameters in all, 2,378,944 of them in the FC decoder, which the
authors' remake=false model does not have); Adam 1e-3 with continuous
exponential decay 0.96 every 2,000 steps; 600,000 steps of batch 128, the
authors' length (1,536 epochs of 50,000 images). The paper's 89.40% averages
the class-capsule lengths of 7 such models; train 7 seeds, then::

  python main.py --config=configs/cifar10_paper.py --workdir=runs/cifar10_ens \
      --mode=ensemble --config.ensemble_workdirs=runs/cifar10_paper_s0,...

No CIFAR10 accuracy has been measured by this project yet (tfds cannot
download on the development machines, and the GPU machine has no tfds).
"""

from configs import cifar10


def get_config():
  config = cifar10.get_config()
  config.data_setup = "paper"
  config.primary_types = 64
  config.conv_padding = "same"
  config.leaky_routing = True
  config.alpha = 0.0
  config.num_train_steps = 600_000
  return config
