"""CapsNet on CIFAR10.

  python main.py --config=configs/cifar10.py --workdir=runs/cifar10

data_setup=reference (default): brightness/contrast jitter and horizontal
flips at full 32x32 (the PyTorch reference). data_setup=paper: 24x24 random
crops, 64 primary capsule types and leaky routing (Sabour et al.)::

  python main.py --config=configs/cifar10.py --workdir=runs/cifar10_paper \
      --config.data_setup=paper --config.primary_types=64 \
      --config.leaky_routing=True

The paper's 89.4% is a 7-model ensemble: train 7 workdirs with different
seeds, then::

  python main.py --config=configs/cifar10.py --workdir=runs/ensemble \
      --mode=ensemble --config.ensemble_workdirs=runs/c0,runs/c1,...

No CIFAR10 accuracy has been measured by this project yet (the development
machines are offline); the reference reports 72.59%.
"""

from configs import default


def get_config():
  config = default.get_config()
  config.dataset = "cifar10"
  config.num_epochs = 50
  return config
