"""CapsNet on CIFAR10 in Sabour et al.'s setup (one member of their ensemble).

  python main.py --config=configs/cifar10_paper.py --workdir=runs/cifar10_paper_s0 \
      --config.seed=0

24x24 random crops with horizontal flips (centre crop at test), 64 primary
capsule types (1024 primary capsules) and leaky routing. The paper's 89.40%
averages the class-capsule lengths of 7 such models; train 7 seeds, then::

  python main.py --config=configs/cifar10_paper.py --workdir=runs/cifar10_ens \
      --mode=ensemble --config.ensemble_workdirs=runs/cifar10_paper_s0,...

No CIFAR10 accuracy has been measured by this project yet (the development
machines are offline and have no GPU).
"""

from configs import cifar10


def get_config():
  config = cifar10.get_config()
  config.data_setup = "paper"
  config.primary_types = 64
  config.leaky_routing = True
  return config
