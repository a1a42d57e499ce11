"""The library's user-facing error: bad input that a stage reports as one line."""


class DSTSError(RuntimeError):
    """Bad input outside the config and data (a checkpoint from another config, missing weights)."""
