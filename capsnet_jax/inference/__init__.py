"""Trained models: loading a workdir or bundled weights, prediction on
arrays and image files, bundle export, ensembles.

Imports capsnet_jax.model, .data, .workdir and training's state and mesh,
never the training loop.
"""
