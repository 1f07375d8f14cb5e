"""CapsNet on smallNORB in Sabour et al.'s setup.

  python main.py --config=configs/smallnorb_paper.py --workdir=runs/smallnorb_paper

Both cameras of a stereo pair form one 2-channel example (24,300 train /
24,300 test), resized to 48x48; random 32x32 crops in training, the centre
crop at test; per-image standardisation. The decoder reconstructs the input
rescaled to [0, 1] per image (its sigmoid cannot produce standardised values).

No smallNORB accuracy has been measured by this project yet (the development
machines are offline and have no GPU); the paper reports 97.3%.
"""

from configs import smallnorb


def get_config():
  config = smallnorb.get_config()
  config.data_setup = "paper"
  return config
