"""One error root: every error a user can fix is a DSTSError, which the stage scripts catch."""

from __future__ import annotations

import pytest

import dsts.config
import dsts.data
from dsts.errors import ConfigError, DataError, DSTSError
from dsts.metrics import MetricsError
from dsts.runs import RunFileError


@pytest.mark.parametrize("error", [ConfigError, DataError, MetricsError, RunFileError])
def test_every_user_error_is_a_dstserror(error):
    with pytest.raises(DSTSError):
        raise error("bad input")


def test_public_homes_and_value_errors():
    assert dsts.config.ConfigError is ConfigError and dsts.data.DataError is DataError
    assert issubclass(ConfigError, ValueError)  # bad values, as before the common root
    assert not issubclass(DSTSError, (RuntimeError, ValueError))  # a bug's error is not caught as bad input
