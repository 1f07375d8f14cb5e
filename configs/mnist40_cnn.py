"""The paper's affNIST baseline CNN on the 40x40 protocol (configs/mnist40.py).

  python main.py --config=configs/mnist40_cnn.py --workdir=runs/mnist40_cnn \
      [--config.idx_dir=../shared/data/mnist]
  python main.py --config=configs/mnist40_cnn.py --workdir=runs/mnist40_cnn \
      --mode=robustness
  python main.py --config=configs/mnist40_cnn.py --mode=summary   # 29,516,042

Sabour et al. 2017, section 5.2 compares CapsNet with "a traditional
convolutional model with a similar number of parameters ... with
MaxPooling and DropOut" that reached 99.22% on the expanded MNIST test set
and 66% on affNIST. The paper gives that CNN's layers nowhere; its own
MNIST baseline (configs/mnist_cnn.py) has no pooling.

Model: "cnn_maxpool" (capsnet_jax/model/cnn.py), the baseline of the
authors' released code (tensorflow/models research/capsules
models/conv_model.py: 5x5 conv 512, 2x2 max-pool stride 2, 5x5 conv 256,
2x2 max-pool, fully connected 1024, a 10-way output; SAME padding) with the
paper's dropout (0.5) before the output layer: it has max pooling, which
the paper names, and it is the architecture the authors shipped beside the
CapsNet. It is of the paper baseline's size and cost class: 29,516,042
parameters on 40x40 (the paper's 28x28 baseline: 35,445,522) and about 2.7
GFLOP per image forward (the 28x28 baseline: 3.9); both are larger than
this CapsNet (configs/mnist40.py).

Data and optimiser: those of configs/mnist40.py (data_setup=expanded: 40x40,
training shifts of up to 6 px, the centred expanded test set), softmax
cross-entropy, Adam 1e-3 decayed by 0.96 every 2,000 steps (floor 1e-6),
batch 128, as configs/mnist_cnn.py, so that CapsNet and CNN differ in
model and loss only. 10 epochs (468 steps each), as configs/mnist_cnn.py.

Measured: not trained yet (scripts/gpu_run.py has the 10-epoch run as
mnist40_cnn). A training step of batch 128 took 10.3 s (median of 2,
`python benchmarks/throughput.py --config=configs/mnist40_cnn.py
--mode=train --repeats=2`, float32, 275.7 GFLOP a step) on a 2-core Intel
Xeon ("Intel(R) Xeon(R) Processor") shared with a nice-19 background
training and another session's test run (load average 6-7; configs/mnist.py
took 1.42 s a step beside them): about 80 min per 468-step epoch at that
load, plus an evaluation of the 10,000 test images (5 min 49 s in a 5-step
/tmp run beside the nice-19 training).
"""

from configs import mnist_cnn


def get_config(variant: str = ""):
  if variant:
    raise ValueError(f"configs/mnist40_cnn.py has no variant {variant!r}")
  # configs/mnist_cnn.py's optimiser, batch and length, on the 40x40 setup
  # with the max-pooling baseline.
  config = mnist_cnn.get_config()
  config.data_setup = "expanded"
  config.model = "cnn_maxpool"
  return config
