"""User-facing errors and the command's exit statuses.

Synopsis::

  raise errors.ConfigError("batch_size must be > 0, got -1")

main.py prints a UserError as one line, ``error: ...``, without a
traceback, and exits with EXIT_USER_ERROR. Exit statuses:

  0  EXIT_OK              success
  1  EXIT_INTERNAL_ERROR  a bug or an unexpected failure (with traceback)
  2  EXIT_USER_ERROR      the user's mistake: a bad flag or config value,
                          missing or damaged data, a workdir in use
  3  EXIT_SOME_FAILED     --mode=predict: some files could not be predicted
                          (the others were)
  130 EXIT_INTERRUPTED    Ctrl-C outside a training loop, or a second
                          Ctrl-C inside one (the first saves and exits 0)
"""

EXIT_OK = 0
EXIT_INTERNAL_ERROR = 1
EXIT_USER_ERROR = 2
EXIT_SOME_FAILED = 3
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report it


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
