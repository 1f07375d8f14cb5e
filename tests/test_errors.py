"""User-facing errors: every kind is a UserError (main.py's one-line report)
and also the built-in exception that callers of the Python API catch."""

import pytest

from capsnet_jax import errors


@pytest.mark.parametrize("kind,builtin", [
    (errors.ConfigError, ValueError),
    (errors.DataError, ValueError),
    (errors.NonFiniteLossError, FloatingPointError),
    (errors.WorkdirError, Exception),
])
def test_error_kinds(kind, builtin):
  with pytest.raises(errors.UserError, match="^the message$"):
    raise kind("the message")
  with pytest.raises(builtin):
    raise kind("x")
