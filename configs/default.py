"""Default hyperparameters: the reference CapsNet setup on MNIST.

Every other config imports this one and overrides a few fields. Any field can
be set on the command line, e.g.::

  python main.py --config=configs/mnist.py --workdir=runs/mnist \
      --config.decoder=deconv --config.batch_norm=True
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()

  # Data. dataset: mnist | smallnorb | cifar10 | multimnist (paper setup
  # only; configs/multimnist.py). data_setup: reference (the PyTorch
  # reference's preprocessing) | paper (Sabour et al.'s) | efficient
  # (Efficient-CapsNet's MNIST augmentation; mnist only) | expanded (the
  # paper's 40x40 protocol, configs/mnist40.py; mnist only).
  config.dataset = "mnist"
  config.data_setup = "reference"
  config.idx_dir = ""  # Local MNIST-format IDX folder instead of tfds.
  # MultiMNIST: fixed test pairs of the MNIST test split (the paper: 10M).
  config.multimnist_test_pairs = 10000
  config.tfds_data_dir = ""  # tfds data_dir; "" = tfds's default.
  # Fraction of the training set held out as a validation split, evaluated
  # beside the test set (< 0: the setup's; reference 0.1, paper 0).
  config.validation_fraction = -1.0

  # Model. model: capsnet | efficient_capsnet (configs/mnist_efficient.py;
  # it ignores the routing and primary_types fields) | tiny, efficient_tiny
  # (tests only).
  config.model = "capsnet"
  config.decoder = "fc"  # fc | deconv
  config.batch_norm = False
  config.routing_iterations = 3
  config.leaky_routing = False
  # What leaky_routing adds: authors (an all-zero orphan logit in the routing
  # softmax, the authors' code) | reference (an orphan class capsule that is
  # never a target, so the margin loss pushes its length below 0.1: the
  # PyTorch reference's --leaky; predictions and outputs leave it out).
  config.leaky_variant = "authors"
  config.routing_stop_gradient = False
  config.primary_types = 0  # 0: the model's own (capsnet 32, tiny 4)
  config.conv_padding = "valid"  # valid | same (conv1 and primary capsules)
  # Fields set to "auto" take the data setup's recipe (capsnet_jax/recipes.py;
  # docs/reference.md, "Recipes"). init: default (LeCun-normal kernels, W ~
  # N(0, 0.01^2), zero biases) | reference (the PyTorch reference's
  # xavier-normal gains 0.02 and 0.002, PyTorch's default biases) | authors
  # (truncated normal 0.05 / 0.1, biases 0.1). auto: reference -> reference,
  # paper -> authors, efficient -> default.
  config.init = "auto"
  # paper (the 8 channels of one capsule type at one position) | reference
  # (8 consecutive values of one feature map, the reference's stack + view).
  # auto: reference -> reference, otherwise paper.
  config.primary_grouping = "auto"
  # none | authors (the primary-capsule convolution scaled by 1 / types, the
  # authors' one-iteration routing). auto: paper -> authors, otherwise none.
  config.primary_vote_scale = "auto"
  # Where the deconv decoder's output bias starts: init (the init scheme's
  # bias; the reference's PyTorch default U(-0.5, 0.5)) | data_mean (logit
  # of the target's mean intensity, so the first reconstructions are
  # MNIST's 0.13 grey instead of 0.5). auto: reference -> init, otherwise
  # data_mean.
  config.decoder_output_bias = "auto"
  config.conv_impl = "auto"  # see capsnet_jax.model.conv.IMPLS
  # float32 (full float32, also on GPUs) | tf32 (NVIDIA GPUs' TF32 matrix
  # products and convolutions; u_hat and everything else stay float32) |
  # bfloat16 (convolutions and decoder; parameters, u_hat, routing, squash
  # and losses stay float32) | auto (bfloat16 on GPU/TPU, float32 on CPU).
  config.compute_dtype = "float32"

  # Optimisation: Adam. lr_schedule: auto (the setup's: reference constant,
  # paper exponential) | constant | exponential (learning_rate *
  # lr_decay_rate ** (step / lr_decay_steps), the authors' continuous
  # tf.train.exponential_decay) | staircase (the same, decayed in steps).
  config.batch_size = 128  # global, over all devices and hosts
  config.eval_batch_size = 0  # 0: same as batch_size
  config.learning_rate = 1e-3
  config.lr_schedule = "auto"
  config.lr_decay_rate = 0.96
  config.lr_decay_steps = 2000
  # Floor of the decayed rate (0: none; < 0: the setup's, paper 1e-6 as the
  # authors' tf.maximum, otherwise none).
  config.lr_min = -1.0
  config.alpha = 0.0005  # weight of the reconstruction loss
  # The reference's reconstruction tricks (its --loss and --anneal options).
  # reconstruction_loss: l2 (per-image sum of squared errors) | l1 (of
  # absolute errors). alpha_schedule (losses.annealed_alpha): none |
  # tanh_shifted (its --anneal 1: alpha (tanh(epoch / T - pi) + 1) / 2) |
  # tanh (its --anneal 2: alpha tanh(epoch / 2T)); "1" and "2" work too.
  # The epoch is step // steps_per_epoch (the reference's first is 0), or
  # step / steps_per_epoch with alpha_fractional_epochs (for short runs).
  config.reconstruction_loss = "l2"
  config.alpha_schedule = "none"
  config.alpha_temperature = 8.0  # T, in epochs
  config.alpha_fractional_epochs = False
  # The margin term of the training objective: sum (the paper's equation,
  # summed over the classes) | authors (their code's mean over the classes of
  # 0.5 x present + 0.25 x absent costs: 1/20 of the sum for 10 classes, so
  # the reconstruction weighs 20x more). auto: paper -> authors, otherwise
  # sum. margin_loss_scale multiplies it. Reported margin losses are always
  # the paper's equation.
  config.margin_reduction = "auto"
  config.margin_loss_scale = 1.0
  config.num_epochs = 50
  config.num_train_steps = -1  # > 0 overrides num_epochs
  config.seed = 0

  # Loop.
  config.log_every_steps = 50
  config.eval_every_steps = 0  # 0: at the end of every epoch
  config.checkpoint_every_steps = 0  # 0: at every evaluation
  config.keep_checkpoints = 3
  config.num_summary_images = 16  # reconstructions logged per evaluation

  # The checkpoint --mode=visualize and --mode=predict read: "latest",
  # "best" (highest test accuracy) or a step number (training, eval and
  # ensemble always use the latest).
  config.checkpoint = "latest"

  # --mode=visualize (figures in WORKDIR/figures).
  config.visualize_num_images = 8  # reconstructions shown
  # Test image of the rotation strip and the primary-capsule figure.
  config.visualize_example = 0
  config.visualize_rotation_step = 15  # degrees between -180 and 180
  config.visualize_rotation_examples = 0  # test images rotated; 0: all
  config.visualize_primary_examples = 4096  # train images for the primary decoder
  config.visualize_primary_steps = 300  # its Adam steps

  # --mode=robustness (capsnet_jax/analysis/robustness.py): the first N
  # test images (0: all); the affNIST-style set's seed; a folder of the real
  # affNIST test files to read instead of the generated set.
  config.robustness_examples = 0
  config.affnist_seed = 0
  config.affnist_dir = ""

  # Ensemble evaluation (--mode=ensemble): comma-separated workdirs.
  config.ensemble_workdirs = ""

  # Fault injection for tests: make the loss NaN at this step (-1: never).
  config.inject_nan_at_step = -1
  return config


def get_hyper(hyper):
  """Hyperparameter sweep (for tools that use it)."""
  return hyper.product([])
