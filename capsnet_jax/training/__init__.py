"""Training: the state and its optimiser schedules, the losses, the
compiled steps over a device mesh, and the loop.

Imports capsnet_jax.model, capsnet_jax.data and capsnet_jax.workdir.
"""
