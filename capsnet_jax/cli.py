"""Train, evaluate, summarise, visualise CapsNet and predict image files.

  capsnet-jax --config=configs/mnist.py --workdir=runs/mnist [--mode=train]
  capsnet-jax --config=configs/mnist.py --workdir=runs/mnist --mode=eval
  capsnet-jax --config=configs/mnist.py --mode=summary
  capsnet-jax --config=configs/mnist.py --workdir=runs/mnist --mode=visualize
  capsnet-jax --config=configs/mnist.py --workdir=runs/mnist --mode=predict \\
      --images=digit.png,scans/,"photos/*.jpg" [--out=DIR] [--invert=auto]
  capsnet-jax --config=configs/mnist.py --workdir=runs/mnist --mode=explore \\
      [--port=8765] [--host=127.0.0.1]
  capsnet-jax --config=configs/mnist.py --workdir=runs/mnist --mode=robustness \\
      [--out=DIR]

(``python main.py`` and ``python -m capsnet_jax`` take the same flags.) Any
config field can be overridden with --config.NAME=VALUE (configs/default.py
lists them). --config is a file, relative to the current directory as
ml_collections reads it; where no such file exists, ``configs/NAME.py``,
``NAME.py`` and ``NAME`` name the config bundled with the package (so
``--config=mnist`` works anywhere). See README.md.

The terminal (capsnet_jax.training.progress): our own lines, a live
progress display on process 0 (a bar where standard error is a terminal,
else a line every 30 s), one line per evaluation and a summary at the end;
the libraries' INFO lines are hidden unless ``--verbosity=1``.
"""

import hashlib
import importlib
import importlib.util
import json
import os
import shlex
import sys
import time

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from capsnet_jax import errors
from capsnet_jax import hostmem
from capsnet_jax import validation
from capsnet_jax.training import progress

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Training configuration.",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs, results.")
flags.DEFINE_enum("mode", "train", validation.MODES, "What to do.")
flags.DEFINE_string("coordinator_address", None,
                    "HOST:PORT of process 0, for multi-process runs.")
flags.DEFINE_integer("num_processes", None, "Number of processes.")
flags.DEFINE_integer("process_id", None, "This process's index.")
flags.DEFINE_integer("distributed_timeout", 300, "Several processes: the "
                     "seconds a process waits for the others at start "
                     "(jax.distributed.initialize, the check that they run "
                     "the same config, workdir and mode).", lower_bound=1)
flags.DEFINE_list("images", None, "--mode=predict: image files, folders or "
                  "globs, comma-separated (PNG/JPEG, any size).")
flags.DEFINE_string("out", None, "--mode=predict: folder for one PNG per image "
                    "(the model's input beside its reconstruction); "
                    "--mode=visualize: folder for the figures (default "
                    "WORKDIR/figures; needed for bundled weights); "
                    "--mode=robustness: folder for robustness.json and "
                    "robustness.png (default WORKDIR/figures; bundled "
                    "weights: printed only, unless given).")
flags.DEFINE_enum("invert", "auto", ("auto", "always", "never"),
                  "--mode=predict, MNIST: invert light backgrounds (auto: "
                  "judged by the border pixels), always or never.")
flags.DEFINE_integer("port", 8765, "--mode=explore: the web page's port "
                     "(0: a free one).", lower_bound=0, upper_bound=65535)
flags.DEFINE_string("host", "127.0.0.1", "--mode=explore: the address to "
                    "listen on (loopback only by default; any other needs "
                    "--expose).")
flags.DEFINE_bool("expose", False, "--mode=explore: allow a --host that is "
                  "not loopback: every machine that reaches it may use the "
                  "explorer (no authentication).")
flags.mark_flags_as_required(["config"])


# --------------------------------------------------------------------------
# Configs: files relative to the current directory, else the bundled ones.


def bundled_config_dir() -> str | None:
  """The configs shipped with the package (capsnet_jax.configs when
  installed), or a source checkout's configs/ folder."""
  spec = importlib.util.find_spec("capsnet_jax.configs")
  if spec is not None and spec.submodule_search_locations:
    return list(spec.submodule_search_locations)[0]
  checkout = os.path.join(os.path.dirname(os.path.dirname(
      os.path.abspath(__file__))), "configs")
  return checkout if os.path.isdir(checkout) else None


def resolve_config(value: str) -> str:
  """--config's value, with a bundled config's path where the file named
  (configs/NAME.py, NAME.py or NAME; any :ARG kept) does not exist."""
  path, sep, arg = value.partition(":")
  if os.path.exists(path) or os.path.dirname(path) not in ("", "configs"):
    return value
  name = os.path.basename(path)
  name = name if name.endswith(".py") else name + ".py"
  folder = bundled_config_dir()
  if folder and os.path.isfile(os.path.join(folder, name)):
    return os.path.join(folder, name) + sep + arg
  return value


def _make_configs_importable() -> None:
  """The config files import ``configs.default``: where no ``configs``
  package is importable (outside a source checkout), the bundled one."""
  if importlib.util.find_spec("configs") is None:
    try:
      sys.modules["configs"] = importlib.import_module("capsnet_jax.configs")
    except ImportError:
      pass


def _parse_flags(argv: list[str]) -> list[str]:
  argv = list(argv)
  for i, arg in enumerate(argv[1:], start=1):
    if arg == "--":
      break
    for prefix in ("--config=", "-config="):
      if arg.startswith(prefix):
        argv[i] = prefix + resolve_config(arg[len(prefix):])
    if arg in ("--config", "-config") and i + 1 < len(argv):
      argv[i + 1] = resolve_config(argv[i + 1])
  _make_configs_importable()
  try:
    return FLAGS(argv)
  except (flags.Error, AttributeError, KeyError) as e:
    # A bad flag, an unknown --config.FOO, a value of the wrong type or a
    # config file that fails: one line, exit status 2.
    lines = [l.strip() for l in str(e).splitlines() if l.strip()]
    if any(l.startswith("Traceback") for l in lines):  # keep what failed
      lines = [lines[0], lines[-1]]
    message = " ".join(lines)
    if isinstance(e, (AttributeError, KeyError)):
      message = f"unknown config field {message.strip(chr(34) + chr(39))}"
    print(f"error: {message or type(e).__name__} (--helpfull lists the "
          "flags; configs/default.py the config fields)", file=sys.stderr,
          flush=True)
    sys.exit(errors.EXIT_USER_ERROR)


# --------------------------------------------------------------------------
# The command.


def _cpu_collectives() -> None:
  """CPU devices of several processes talk through gloo."""
  if jax.config.jax_platforms in (None, "", "cpu") or "cpu" in str(
      jax.config.jax_platforms):
    jax.config.update("jax_cpu_collectives_implementation", "gloo")


def _initialize_distributed():
  if FLAGS.coordinator_address or FLAGS.num_processes:
    _cpu_collectives()
    jax.distributed.initialize(coordinator_address=FLAGS.coordinator_address,
                               num_processes=FLAGS.num_processes,
                               process_id=FLAGS.process_id,
                               initialization_timeout=FLAGS.distributed_timeout)
  else:
    # A cluster JAX detects by itself (SLURM, Open MPI, TPU pods, ...);
    # elsewhere initialize() raises and the run is single-process.
    from jax._src import clusters  # pylint: disable=g-import-not-at-top
    if any(c.is_env_present() for c in clusters.ClusterEnv._cluster_types):  # pylint: disable=protected-access
      _cpu_collectives()
    try:
      jax.distributed.initialize(
          initialization_timeout=FLAGS.distributed_timeout)
    except (ValueError, RuntimeError):
      pass


# --------------------------------------------------------------------------
# Several processes must run the same command (issue 38).


def run_digest(mode: str, config, workdir: str | None) -> str:
  """sha256 of what every process of a run must agree on: the mode, the
  workdir, the config and the workdir's latest checkpoint step."""
  from capsnet_jax.workdir import park  # pylint: disable=g-import-not-at-top
  steps = park.complete_steps(workdir) if workdir else []
  step = steps[-1] if steps else None
  values = config.to_dict() if hasattr(config, "to_dict") else dict(config)
  text = json.dumps(dict(mode=mode, workdir=workdir, config=values,
                         latest_step=step), sort_keys=True, default=repr)
  return hashlib.sha256(text.encode()).hexdigest()


def check_processes_agree(mode: str, config, workdir: str | None,
                          timeout_s: float) -> None:
  """With several JAX processes, each publishes its run_digest through the
  distributed key-value store and reads every other's, waiting at most
  ``timeout_s``: a UserError (the same line on every process) when they
  differ or one does not answer. A no-op with one process."""
  if jax.process_count() == 1:
    return
  from jax._src import distributed  # pylint: disable=g-import-not-at-top
  client = distributed.global_state.client
  client.key_value_set(f"capsnet_jax/run_digest/{jax.process_index()}",
                       run_digest(mode, config, workdir))
  digests = []
  for i in range(jax.process_count()):
    try:
      digests.append(client.blocking_key_value_get(
          f"capsnet_jax/run_digest/{i}", int(timeout_s * 1000)))
    except Exception as e:  # pylint: disable=broad-except  # XlaRuntimeError
      raise errors.UserError(
          f"process {i} did not tell its config within {timeout_s:g} s "
          f"(--distributed_timeout): {str(e).strip().splitlines()[0]}"
          ) from None
  differ = [i for i, d in enumerate(digests) if d != digests[0]]
  if differ:
    raise errors.ConfigError(
        f"process(es) {', '.join(map(str, differ))} of {len(digests)} run "
        "another config, workdir, mode or latest checkpoint than process 0: "
        "start every process with the same flags on the same workdir")


def run(mode: str, config, workdir: str | None, images=None, out=None,
        invert: str = "auto", host: str = "127.0.0.1", port: int = 8765,
        expose: bool = False):
  """Dispatches one --mode; returns its result (predict: the exit status).

  The config is validated and resolved here, once (capsnet_jax.experiment);
  everything below takes the resolved experiment. Several processes first
  check that they run the same command (check_processes_agree).
  """
  check_processes_agree(mode, config, workdir,
                        FLAGS.distributed_timeout if FLAGS.is_parsed()
                        else FLAGS["distributed_timeout"].default)
  # Imported here so that --help and flag errors stay fast.
  from capsnet_jax import experiment  # pylint: disable=g-import-not-at-top
  if mode == "summary":
    from capsnet_jax.analysis import summary  # pylint: disable=g-import-not-at-top
    return summary.print_summary(experiment.resolve(config, mode))
  if not workdir:
    raise errors.ConfigError(f"--mode={mode} needs --workdir")
  from capsnet_jax.inference import bundled  # pylint: disable=g-import-not-at-top
  if mode in ("train", "eval", "ensemble") and bundled.is_bundle(workdir):
    raise errors.ConfigError(
        f"--workdir={workdir} is bundled weights (inference variables only, "
        f"no optimiser state, read-only): --mode={mode} needs a "
        "training workdir of your own; the bundle works with --mode=predict, "
        "--mode=explore and --mode=visualize --out=DIR (its summary.json has "
        "the test accuracy)")
  if mode == "predict":
    if not images:
      raise errors.ConfigError("--mode=predict needs --images=PATH[,PATH...] "
                               "(files, folders or globs)")
    from capsnet_jax.inference import predict  # pylint: disable=g-import-not-at-top
    from capsnet_jax.inference import trained  # pylint: disable=g-import-not-at-top
    if out:
      predict.prepare_out(out)  # a file there fails before any compute
    # The workdir's record defines the model; the command line the rest.
    # Where the training data was does not matter here.
    merged = trained.with_workdir_model(config, workdir)
    merged.idx_dir = merged.tfds_data_dir = ""
    exp = experiment.resolve(merged, mode)
    # stdout holds the JSON lines only, even where a library prints.
    with predict.json_only_stdout() as stdout:
      model = trained.load(workdir, which=trained.which_checkpoint(exp.config),
                           config=exp)
      return predict.run(model, images, out, invert, stdout=stdout)
  if mode == "explore":
    from capsnet_jax.analysis import explorer  # pylint: disable=g-import-not-at-top
    return explorer.run(config, workdir, host, port, invert, expose=expose)
  if mode == "robustness":
    from capsnet_jax.analysis import robustness  # pylint: disable=g-import-not-at-top
    from capsnet_jax.inference import predict  # pylint: disable=g-import-not-at-top
    from capsnet_jax.inference import trained  # pylint: disable=g-import-not-at-top
    # The workdir's record defines the model (any family); the command
    # line the data, the checkpoint and the sweep's options.
    exp = experiment.resolve(trained.with_workdir_model(config, workdir),
                             mode)
    with predict.json_only_stdout() as stdout:
      robustness.run(exp, workdir, out, stdout=stdout)
    return None
  exp = experiment.resolve(config, mode)
  if mode in ("train", "eval"):
    from capsnet_jax.training import loop  # pylint: disable=g-import-not-at-top
    if mode == "train":
      return loop.train_and_evaluate(exp, workdir)
    return loop.evaluate_checkpoint(exp, workdir)
  if mode == "ensemble":
    from capsnet_jax.inference import ensemble  # pylint: disable=g-import-not-at-top
    return ensemble.evaluate_ensemble(exp, workdir)
  from capsnet_jax.analysis import visualize  # pylint: disable=g-import-not-at-top
  return visualize.visualize(exp, workdir, out)


# --------------------------------------------------------------------------
# The summary at the end.


def command(mode: str, workdir: str, argv: list[str] | None = None) -> str:
  """The command line of ``mode`` on ``workdir`` with this command's
  --config and --config.NAME flags (``argv``, default sys.argv), as the
  program was started (python main.py, python -m capsnet_jax, capsnet-jax)."""
  argv = sys.argv if argv is None else argv
  program = os.path.basename(argv[0]) if argv else "main.py"
  if program == "main.py":
    words = ["python", argv[0]]
  elif program in ("__main__.py", "cli.py"):
    words = ["python", "-m", "capsnet_jax"]
  else:
    words = [program or "capsnet-jax"]
  args = iter(argv[1:])
  for arg in args:
    if arg == "--":
      break
    name = arg.lstrip("-").partition("=")[0]
    if arg.startswith("-") and (name == "config" or
                                name.startswith("config.")):
      words.append(arg)
      if "=" not in arg:  # --config FILE
        words.append(next(args, ""))
  words += [f"--workdir={workdir}", f"--mode={mode}"]
  return " ".join(shlex.quote(w) for w in words)


def summary(mode: str, workdir: str, results, seconds: float,
            argv: list[str] | None = None) -> str | None:
  """The terminal's last lines after --mode=train or eval: the result, where
  results.json is, the command for the figures and TensorBoard's (None
  after a preempted run, whose warning says what to do)."""
  if not isinstance(results, dict) or "test_accuracy" not in results:
    return None
  from capsnet_jax.workdir import record  # pylint: disable=g-import-not-at-top
  line = (f"{'Trained' if mode == 'train' else 'Evaluated'} in "
          f"{progress.duration(seconds)}: step {results['step']}")
  if "epoch" in results:
    line += f" (epoch {results['epoch']:.2f})"
  line += f", test accuracy {100 * results['test_accuracy']:.2f}%"
  if results.get("best_test_accuracy") is not None:
    line += (f" (best {100 * results['best_test_accuracy']:.2f}% at step "
             f"{results['best_step']})")
  return "\n".join([
      line + ".",
      f"  results:     {os.path.join(workdir, record.RESULTS_FILE)}",
      f"  figures:     {command('visualize', workdir, argv)}",
      f"  TensorBoard: tensorboard --logdir={shlex.quote(workdir)}"])


def main(argv):
  if len(argv) > 1:
    print(f"error: unexpected arguments {argv[1:]} (flags are --NAME=VALUE; "
          "--helpfull lists them)", file=sys.stderr, flush=True)
    sys.exit(errors.EXIT_USER_ERROR)
  progress.configure_logging(FLAGS.verbosity)
  t = time.monotonic()
  try:
    if FLAGS.mode != "summary":
      _initialize_distributed()
      progress.set_lead(jax.process_index() == 0)
      logging.info("JAX process %d of %d; %d local / %d global devices (%s)",
                   jax.process_index(), jax.process_count(),
                   jax.local_device_count(), jax.device_count(),
                   jax.devices()[0].platform)
    result = run(FLAGS.mode, FLAGS.config, FLAGS.workdir, FLAGS.images,
                 FLAGS.out, FLAGS.invert, FLAGS.host, FLAGS.port,
                 FLAGS.expose)
  except errors.UserError as e:
    print(f"error: {e}", file=sys.stderr, flush=True)
    sys.exit(errors.EXIT_USER_ERROR)
  except KeyboardInterrupt:
    print("interrupted (Ctrl-C)", file=sys.stderr, flush=True)
    sys.exit(errors.EXIT_INTERRUPTED)
  if FLAGS.mode == "predict":
    sys.exit(result)
  if FLAGS.mode in ("train", "eval") and progress.is_lead():
    lines = summary(FLAGS.mode, FLAGS.workdir, result, time.monotonic() - t)
    if lines:
      logging.info("%s", lines)


def entry_point():
  """The ``capsnet-jax`` command (and main.py, python -m capsnet_jax[.cli])."""
  hostmem.use_huge_pages()  # a no-op where main.py did it already
  # --help lists the flags of the main module: make ours its key flags, and
  # this docstring its usage where the main module has none.
  main_module = sys.modules.get("__main__")
  for flag in FLAGS.get_key_flags_for_module(__name__):
    FLAGS.register_key_flag_for_module(sys.argv[0], flag)
  if main_module is not None and not main_module.__doc__:
    main_module.__doc__ = __doc__
  app.run(main, flags_parser=_parse_flags)


if __name__ == "__main__":
  entry_point()
