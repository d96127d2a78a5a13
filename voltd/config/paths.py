"""Files the config names: found relative to the config file, opened to check, named safely.

A path in the file is relative to the file, not to wherever voltd was started, and a file the
server could not read must fail `voltd check`, not the start. Messages about a file end with
its absolute path, unless a secret went into that path.
"""

from __future__ import annotations

import os
from pathlib import Path

from voltd.config.errors import _Invalid, one_line


def _absolute(base: Path, text: str) -> Path:
    """Relative paths are relative to the config file, not to the cwd."""
    return Path(os.path.abspath(base / os.path.expanduser(text)))


def _readable(path: Path, *, secret: bool) -> Path:
    """The path, if the file opens: one the server cannot read fails the check, not the start."""
    try:
        with open(path, "rb"):
            pass
    except (OSError, ValueError) as e:
        why = f"cannot read: {_open_error(e)} {_path_note(path, secret)}"
        raise _Invalid(why, show_input=False) from None
    return path


def _path_note(path: Path, secret: bool, kind: str = "file") -> str:
    """`(file /abs/path)` to end a message with, or the path hidden when a secret went into it."""
    if secret:
        return f"({kind} hidden: it comes from a secret)"
    return f"({kind} {one_line(str(path))})"


def _open_error(e: OSError | ValueError) -> str:
    """Why open() failed, in words. Its only ValueError for paths read here is for a NUL
    character (lone surrogates cannot come from TOML, UTF-8 files or the environment)."""
    if isinstance(e, OSError):
        return e.strerror or type(e).__name__
    return "the path contains a NUL character"
