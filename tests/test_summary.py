"""--mode=summary: the parameter table and its last line, a JSON of counts."""

import json
import os

import jax.numpy as jnp

from capsnet_jax.analysis import summary
from configs import default
from conftest import run_main



def test_summary_command(tmp_path):
  # REFERENCE.md's counts (tests/test_models.py derives the parts, and the
  # deconv decoder's in-process).
  total, decoder = 8_215_728, 1_411_344
  result = run_main("--config=configs/mnist.py", "--mode=summary",
                    cwd=tmp_path)
  lines = result.stdout.strip().splitlines()
  counts = json.loads(lines[-1])
  assert counts["total_params"] == total
  assert counts["decoder_params"] == decoder
  assert counts["encoder_params"] == total - decoder == 6_804_384
  assert counts["non_trainable_params"] == 0
  assert (counts["model"], counts["dataset"], counts["data_setup"]) == (
      "capsnet", "mnist", "paper")
  assert f"Total: {total:,}" in result.stdout  # clu's table above it
  assert not os.listdir(tmp_path)  # no workdir needed, nothing written


def test_summarize_counts_every_top_level_part():
  params = {"stem": {"kernel": jnp.zeros((3, 4)), "bias": jnp.zeros(4)},
            "head": {"w": jnp.zeros((2, 5))},
            "decoder": {"a": jnp.zeros((6,)), "b": {"c": jnp.zeros((2, 2))}}}
  assert summary.summarize(params) == {
      "total_params": 16 + 10 + 10, "encoder_params": 26,
      "stem_params": 16, "head_params": 10, "decoder_params": 10}


def test_batch_norm_statistics_are_non_trainable(capsys):
  """The tiny model with batch norm: 234,896 parameters (test_train derives
  them) + scale and bias of BN over 8 (conv1), 32 (primary) and 16, 32
  (decoder) features = 235,072; their running mean and variance, 176, are
  not trained."""
  config = default.get_config()
  config.update(model="tiny", batch_norm=True)
  counts = summary.print_summary(config)
  assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == counts
  assert counts["total_params"] == 235_072
  assert counts["non_trainable_params"] == 176
  assert counts["decoder_params"] == 28_992 + 2 * (16 + 32)
  assert counts["batch_norm"] is True and counts["model"] == "tiny"
