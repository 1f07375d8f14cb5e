"""The network: convolutions, capsule layers, routing, decoders, the two
model families, initialisers and compute precision.

Imports nothing from the rest of capsnet_jax; everything else imports it.
"""
