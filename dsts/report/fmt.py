"""How ``ablation.md`` writes numbers: accuracies in percentage points, p-values, counts and tables.
An undefined value reads "n/a", never "nan"."""

from __future__ import annotations

import math
from collections.abc import Sequence

import pandas as pd

__all__ = ["ci_pts", "count", "level", "md_table", "num", "pts", "pval"]


def pts(x: float, signed: bool = False, digits: int = 1) -> str:
    """A fraction in percentage points, one decimal unless ``digits`` says otherwise."""
    if not math.isfinite(x):
        return "n/a"
    return f"{100.0 * x:+.{digits}f}" if signed else f"{100.0 * x:.{digits}f}"


def pval(p: float) -> str:
    if not math.isfinite(p):
        return "n/a"
    if p == 0.0:
        return "0"
    return f"{p:.1e}" if p < 1e-3 else f"{p:.3f}"


def num(x: float, digits: int = 3) -> str:
    return f"{x:.{digits}f}" if math.isfinite(x) else "n/a"


def ci_pts(low: float, high: float, signed: bool = False) -> str:
    if not (math.isfinite(low) and math.isfinite(high)):
        return "n/a"
    return f"[{pts(low, signed)}, {pts(high, signed)}]"


def level(alpha: float) -> str:
    """The confidence level of the intervals, ``1 - alpha``, in percent."""
    return f"{100 * (1 - alpha):g}%"


def count(x: float) -> str:
    if not math.isfinite(x):
        return "n/a"
    return f"{x / 1e6:.2f} M" if x >= 1e5 else f"{int(round(x))}"


def md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A markdown table of already formatted cells (tabulate's number parsing off)."""
    return pd.DataFrame(list(rows), columns=list(header)).to_markdown(index=False, disable_numparse=True)
