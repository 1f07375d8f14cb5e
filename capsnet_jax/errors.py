"""User-facing errors: main.py prints these as one line and exits non-zero.

Synopsis::

  raise errors.ConfigError("batch_size must be > 0, got -1")
"""


class UserError(Exception):
  """A mistake in the user's input: reported without a traceback."""


class ConfigError(UserError, ValueError):
  """An invalid configuration value or flag."""


class WorkdirError(UserError):
  """The workdir cannot be used (unwritable, other run, no checkpoint)."""


class NonFiniteLossError(UserError, FloatingPointError):
  """Training produced a NaN or Inf loss."""


class DataError(UserError, ValueError):
  """A dataset cannot be read: missing or malformed files, failed download."""
