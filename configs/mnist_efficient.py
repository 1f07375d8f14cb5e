"""Efficient-CapsNet on MNIST, the authors' recipe (Mazzia et al. 2021).

Train and evaluate (downloads MNIST through tfds, or reads IDX files)::

  python main.py --config=configs/mnist_efficient.py --workdir=runs/mnist_efficient \
      [--config.idx_dir=../shared/data/mnist]

Model (capsnet_jax/model/efficient.py): conv stem with batch norm, 16 depthwise
primary capsules of 8D, self-attention routing to 10 class capsules of 16D,
FC decoder 512/1024/784; 161,824 trainable parameters without the decoder (the
paper's figure), 1,573,168 with it.

Recipe, read from EscVM/Efficient-CapsNet:
- Adam, learning rate 5e-4 (config.json "lr"), multiplied by 0.97 at every
  epoch ("lr_dec"; utils/tools.py learn_scheduler, a Keras
  LearningRateScheduler) and floored at 5e-5 (the same function); here 3,750
  steps = one epoch of 60,000 at batch 16 (change lr_decay_steps with
  batch_size). Keras' Adam epsilon is 1e-7, optax's 1e-8.
- Batch 16 ("batch_size"), 150 epochs ("epochs").
- Loss (models/model.py compile): margin loss (utils/tools.py marginLoss:
  m+ 0.9, m- 0.1, lambda 0.5, summed over classes, batch mean) + 0.392
  ("lmd_gen") x Keras 'mse', the mean over all 784 pixels: 0.392 / 784 =
  0.0005 x the per-image sum of squared errors, our alpha.
- Input pixels / 256; training augmentation (utils/pre_process_mnist.py):
  random rotation (probability 1/2, up to 29 degrees), a shift keeping the
  digit in the frame, a horizontal squish by 1-7 px, a 4x4 erased patch:
  data_setup=efficient (capsnet_jax/data/augment.py).
- Their ModelCheckpoint keeps the epoch with the best test accuracy; ours
  reports best_test_accuracy beside the final one.

Measured on a 2-core AMD EPYC CPU shared with other jobs (load average 4-6;
float32 GEMM peak 55-96 GFLOP/s in the same runs, against 375-429 on the idle
host), 2026-11-25:

  300 steps (--config.num_train_steps=300 --config.idx_dir=...): 94.26% on
  the 10,000 test images (margin loss 0.1325, reconstruction SSE 46.5),
  2 min 2 s wall time including compilation and the final evaluation; about
  9.6 steps/s (150 images/s) while training.
  benchmarks/throughput.py --config=configs/mnist_efficient.py: training
  99-188 images/s at batch 16 (3.23 GFLOP a step by XLA's count); inference
  613-1036 images/s at batch 16, 404-1275 at batch 500 (the evaluation
  batch). CapsNet (configs/mnist.py) on the same loaded host: 42.6 images/s to
  train, 129 to infer.
  At about 150 images/s the full 150 epochs (9M images) take about 17 hours
  on this CPU.

The runs (README.md, "Efficient-CapsNet", tables generated from their
eval_history.jsonl, kept in docs/results/cpu/mnist_efficient*): run 1 98.76%
after epoch 1, 99.53% after 9 (first >= 99.5%), then lost; run 2 (same
command and seed, later code) 98.84% after 1, 99.50% after 10, 99.60% after
20, 99.66% at 40, 99.69% best by epoch 58, then lost with its machine; run 3
(scripts/run_efficient.sh, the same command on the same code) repeats run 2
bit for bit through epoch 58 and ran all 150 epochs (finished 2026-12-02):
best 99.73% at epoch 74, one test image short of the paper's single model
(about 99.74%; its 99.84% is an ensemble), 99.66% at epoch 150, 99.61-99.72%
over the 75 epochs at the learning-rate floor (76-150, mean 99.66%). Its
running time summed over its sessions was 16.48 hours; alone, an epoch
with its evaluation took 2.8-4.5 minutes on the same CPU kind with huge
pages on 2026-12-02 (epochs 122-150; capsnet_jax/hostmem.py) and 4.4-5.8 on
earlier sessions' hosts, so the 150 epochs take 7-14.5 hours. Its final checkpoint (step 562,500) is parked in the
repository (docs/results/cpu/mnist_efficient_run3/parked, capsnet_jax/workdir/park.py).
The bundled weights (capsnet_jax/weights/mnist_efficient) are run 3's best
checkpoint, epoch 74 (99.73%); their weights.json names it.
"""

from configs import default


def get_config():
  config = default.get_config()
  config.dataset = "mnist"
  config.data_setup = "efficient"
  config.model = "efficient_capsnet"
  config.decoder = "fc"
  config.batch_size = 16
  config.eval_batch_size = 500
  config.learning_rate = 5e-4
  config.lr_schedule = "staircase"  # decayed once per epoch
  config.lr_decay_rate = 0.97
  config.lr_decay_steps = 3750  # one epoch: 60,000 / 16
  config.lr_min = 5e-5
  config.alpha = 0.0005  # 0.392 x per-pixel MSE = 0.0005 x per-image SSE
  config.num_epochs = 150
  config.log_every_steps = 250
  return config
