"""The data layer's one error type (kept free of heavy imports so stages can catch it cheaply)."""

from __future__ import annotations


class DataError(Exception):
    """Bad data: the one-line message names the annotation file and entry or line, or the video file."""
