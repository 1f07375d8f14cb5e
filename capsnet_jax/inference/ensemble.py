"""Ensemble evaluation: average the class-capsule lengths of several models.

Synopsis::

  python main.py --config=configs/cifar10.py --workdir=runs/ensemble \
      --mode=ensemble --config.ensemble_workdirs=runs/c0,runs/c1,runs/c2

Sabour et al.'s 89.4% on CIFAR10 is such an average over 7 models. Every
member workdir must hold a trained checkpoint of the same dataset and setup;
each member's own config.json defines its architecture.
"""

import json
import os
from typing import Any

from absl import logging
import jax
import ml_collections
import numpy as np

from capsnet_jax import experiment
from capsnet_jax import validation
from capsnet_jax.errors import WorkdirError
from capsnet_jax.inference import trained
from capsnet_jax.training import progress
from capsnet_jax.workdir import files
from capsnet_jax.workdir import record


def ensemble_predictions(lengths: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
  """Mean class-capsule lengths [N, K] of the members and their argmax [N].

  Args:
    lengths: one [N, K] array per member.
  """
  mean = np.mean(np.stack(lengths), axis=0)
  return mean, np.argmax(mean, axis=-1)


def accuracy(lengths: np.ndarray, labels: np.ndarray) -> float:
  """Fraction right: the longest capsule is the label [N]; for labels
  [N, T] (MultiMNIST), the T longest capsules are exactly the labels."""
  if labels.ndim == 2:
    top = np.argsort(-lengths, axis=-1, kind="stable")[:, :labels.shape[1]]
    return float(np.mean(np.all(np.sort(top, 1) == np.sort(labels, 1), 1)))
  return float(np.mean(np.argmax(lengths, -1) == labels))


def member_config(workdir: str, base) -> ml_collections.ConfigDict:
  """``base`` updated with the fields of ``workdir``'s recorded config."""
  saved = trained.read_config(workdir)
  if saved is None:
    raise WorkdirError(f"ensemble member {workdir!r} has no {record.CONFIG_FILE}"
                       "; is it a trained workdir?")
  config = ml_collections.ConfigDict(dict(base.to_dict()))
  for key, value in saved.items():
    if key in config and key not in ("ensemble_workdirs", "idx_dir",
                                     "tfds_data_dir"):
      config[key] = value
  return config


def test_lengths(config, workdir: str, images: np.ndarray) -> np.ndarray:
  """Class-capsule lengths [N, K] of ``workdir``'s latest checkpoint on
  ``images`` (uint8 as stored): its per-class scores, which for a baseline
  CNN are its softmax probabilities (an ensemble of CNNs averages those)."""
  try:
    member = trained.load(workdir, config=config)
  except WorkdirError as e:
    raise WorkdirError(f"ensemble member {workdir!r}: {e}") from None
  return member.predict(images, ("scores",)).scores


def evaluate_ensemble(config, workdir: str) -> dict[str, Any]:
  """--mode=ensemble: accuracy of the averaged lengths; writes
  ensemble_results.json.

  Every process reads the whole test set; the members are evaluated one by
  one, each sharded over every device.
  """
  config = experiment.ensure(config, "ensemble").config
  members = validation.ensemble_members(config)
  configs = [member_config(w, config) for w in members]
  datasets = {(c.dataset, c.data_setup) for c in configs}
  if len(datasets) != 1:
    raise WorkdirError(f"ensemble members use different data: {sorted(datasets)}")
  first = experiment.resolve(configs[0], "ensemble")
  splits = first.load_splits(process_index=0, process_count=1)
  test, info = splits.test, splits.info
  lengths, accuracies = [], []
  # Process 0 shows the members done (a bar on a terminal).
  with progress.Progress("ensemble", len(members), "member",
                         enabled=jax.process_index() == 0) as shown:
    for member, cfg in zip(members, configs):
      member_lengths = test_lengths(cfg, member, test.images)
      accuracies.append(accuracy(member_lengths, test.labels))
      logging.info("member %s: test accuracy %.4f", member, accuracies[-1])
      lengths.append(member_lengths)
      shown.update()
  mean_lengths, _ = ensemble_predictions(lengths)
  results = dict(
      ensemble_workdirs=members, member_test_accuracies=accuracies,
      test_accuracy=accuracy(mean_lengths, test.labels),
      num_models=len(members), dataset=info.name, num_test=len(test.labels))
  logging.info("ensemble of %d: test accuracy %.4f", len(members),
               results["test_accuracy"])
  if jax.process_index() == 0:
    record.check_writable(workdir)
    files.atomic_write_json(os.path.join(workdir, "ensemble_results.json"),
                            results)
  print(json.dumps(results))
  return results
