"""python -m capsnet_jax: the capsnet-jax command (capsnet_jax.cli)."""

from capsnet_jax import cli

cli.entry_point()
