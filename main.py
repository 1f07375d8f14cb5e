"""Train, evaluate, summarise and visualise CapsNet; predict image files.

  python main.py --config=configs/mnist.py --workdir=runs/mnist [--mode=train]
  python main.py --config=configs/mnist.py --workdir=runs/mnist --mode=eval
  python main.py --config=configs/mnist.py --mode=summary
  python main.py --config=configs/mnist.py --workdir=runs/mnist --mode=visualize
  python main.py --config=configs/mnist.py --workdir=runs/mnist --mode=predict \\
      --images=digit.png,scans/ [--out=DIR] [--invert=auto|always|never]

Any config field can be overridden with --config.NAME=VALUE (configs/default.py
lists them). The flags and modes live in capsnet_jax/cli.py, which is also the
installed `capsnet-jax` command. See README.md.
"""

from capsnet_jax import hostmem

if __name__ == "__main__":
  hostmem.use_huge_pages()  # before JAX is imported: may restart the process
  from capsnet_jax import cli  # pylint: disable=g-import-not-at-top
  cli.entry_point()
