"""Writing files so that a reader never sees half of one: the one home of atomic writes.

:func:`atomic_write` writes a file through a temporary file in the same folder, then renames it
into place; :func:`staged_folder` does the same for a set of files. A failure or a kill leaves the
old file (or folder) as it was.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

# New files get the usual permissions (mkstemp would make them private to the owner).
_UMASK = os.umask(0)
os.umask(_UMASK)


@contextmanager
def atomic_write(path: str | os.PathLike[str], mode: str = "w", **open_args: Any) -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path`` (``mode`` ``"w"`` or ``"wb"``); on a clean exit it is
    flushed, synced and renamed to ``path``; on an exception it is removed and ``path`` is untouched."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)
        with os.fdopen(fd, mode, **open_args) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text(path: str | os.PathLike[str], text: str) -> None:
    with atomic_write(path) as handle:
        handle.write(text)


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """``obj`` as indented JSON with sorted keys: the same object gives the same bytes."""
    write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


@contextmanager
def staged_folder(target: str | os.PathLike[str], replace: bool = False) -> Iterator[Path]:
    """An empty folder beside ``target`` to write into. On a clean exit its entries move into
    ``target`` (same names are replaced, others kept), or with ``replace`` the whole folder takes
    ``target``'s place; on an exception nothing of ``target`` changes."""
    final = Path(target)
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.staging-", dir=final.parent))
    try:
        yield staging
        if replace:
            old = final.with_name(f".{final.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            if final.exists():
                os.replace(final, old)
            try:
                os.replace(staging, final)
            except OSError:
                if old.exists():  # put the complete older folder back
                    os.replace(old, final)
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            final.mkdir(exist_ok=True)
            for entry in sorted(staging.iterdir()):
                os.replace(entry, final / entry.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
