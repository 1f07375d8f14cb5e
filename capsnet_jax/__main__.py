"""python -m capsnet_jax: the capsnet-jax command (capsnet_jax.cli)."""

from capsnet_jax import hostmem

hostmem.use_huge_pages()  # before JAX is imported: may restart the process
from capsnet_jax import cli  # pylint: disable=g-import-not-at-top,wrong-import-position

cli.entry_point()
