"""CapsNet on CIFAR10.

  python main.py --config=configs/cifar10.py --workdir=runs/cifar10

data_setup=reference (default): brightness/contrast jitter and horizontal
flips at full 32x32 (the PyTorch reference). Sabour et al.'s setup (24x24
random crops, 64 primary capsule types, leaky routing, 7-model ensemble) is
configs/cifar10_paper.py.

No CIFAR10 accuracy has been measured by this project yet (the development
machines are offline); the reference reports 72.59%.
"""

from configs import default


def get_config():
  config = default.get_config()
  config.dataset = "cifar10"
  config.num_epochs = 50
  return config
