"""CapsNet on smallNORB (5 classes, 32x32 crops of 48x48 images).

  python main.py --config=configs/smallnorb.py --workdir=runs/smallnorb

data_setup=reference (default): each stereo pair gives two single-channel
examples, random crops with brightness/contrast jitter (the PyTorch
reference), at 48x48 cropped to 32x32 with the 32x32 deconvolution decoder
when --config.decoder=deconv. Sabour et al.'s setup (both cameras as 2
channels, per-image standardisation) is configs/smallnorb_paper.py.

No smallNORB accuracy has been measured by this project yet (the development
machines are offline); the reference reports 91.5%, the paper 97.3%.
"""

from configs import default


def get_config():
  config = default.get_config()
  config.dataset = "smallnorb"
  config.num_epochs = 50
  return config
