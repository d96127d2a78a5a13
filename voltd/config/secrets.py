"""Secrets: `${env:NAME}` and `${file:PATH}` resolved before validation, and never echoed.

A value that came from a secret must not show up in any message, and the model cannot tell
which values did. So references are resolved here, on the raw TOML, and `_Secrets` remembers
where secrets went (key paths) and what they were (values), for every message to check against.
"""

from __future__ import annotations

import os
import re
from collections.abc import Collection
from pathlib import Path
from typing import Any, Final

from voltd.config.errors import _BARE_KEY, Loc, _Invalid, format_key_path, one_line
from voltd.config.paths import _absolute, _open_error

#: What a message says instead of a value that came from a `${env:…}`/`${file:…}` secret.
_HIDDEN: Final = "value hidden: it comes from a secret"

#: Stands in for a value whose secret could not be resolved, so it is not judged twice.
_BROKEN: Final = object()
_REFERENCE = re.compile(r"\$\$\{|\$\{([^}]*)\}|\$\{")
_SECRET_HELP: Final = "expected ${env:NAME} or ${file:PATH} (write $${ for a literal ${)"


class _Secrets:
    """Resolves `${env:…}`/`${file:…}` in every string, remembering where secrets went."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.problems: list[tuple[Loc, str]] = []
        self.paths: set[str] = set()  # key paths holding a secret
        self.broken: set[Loc] = set()  # key paths whose secret could not be resolved
        self.values: set[str] = set()  # resolved values, for messages that quote a value

    def expand(self, value: Any, loc: Loc = ()) -> Any:
        if isinstance(value, dict):
            return {k: self.expand(v, (*loc, k)) for k, v in value.items()}
        if isinstance(value, list):
            return [self.expand(v, (*loc, i)) for i, v in enumerate(value)]
        if not isinstance(value, str) or "${" not in value:
            return value
        found: list[str] = []  # problems, or "" for each reference resolved

        def replace(m: re.Match[str]) -> str:
            if m.group(0) == "$${":
                return "${"
            try:
                if m.group(1) is None:
                    raise _Invalid(
                        f"unterminated secret reference '${{' without '}}'; {_SECRET_HELP}"
                    )
                resolved = self._resolve(m.group(1))
            except _Invalid as e:
                found.append(str(e))
                return ""
            found.append("")
            return resolved

        text = _REFERENCE.sub(replace, value)
        if not found:
            return text
        self.paths.add(format_key_path(loc))
        self.problems += [(loc, problem) for problem in found if problem]
        if any(found):
            self.broken.add(loc)
            return _BROKEN
        self.values.add(text)
        return text

    def _resolve(self, reference: str) -> str:
        kind, sep, arg = (part.strip() for part in reference.partition(":"))
        if not sep or kind not in ("env", "file"):
            shown = kind if _BARE_KEY.fullmatch(kind or "-") and len(kind) <= 20 else "?"
            raise _Invalid(f"unknown kind of secret reference '${{{shown}:…}}'; {_SECRET_HELP}")
        if not arg:
            what = "NAME" if kind == "env" else "PATH"
            raise _Invalid(f"empty secret reference '${{{kind}:}}'; expected ${{{kind}:{what}}}")
        if kind == "env":
            if arg not in os.environ:
                raise _Invalid(f"environment variable {one_line(arg)} is not set")
            return os.environ[arg]
        path = _absolute(self.base, arg)
        try:
            with open(path, "rb") as f:
                content = f.read(1 << 20).decode("utf-8")
        except UnicodeDecodeError:  # a ValueError too: caught first
            raise _Invalid(f"secret file {one_line(str(path))} is not UTF-8 text") from None
        except (OSError, ValueError) as e:
            shown = one_line(str(path))
            raise _Invalid(f"cannot read secret file {shown}: {_open_error(e)}") from None
        if content.endswith("\n"):  # the newline an editor adds is not part of the secret
            content = content[:-2] if content.endswith("\r\n") else content[:-1]
        return content


def _from_secret(value: Any, secrets: Collection[str]) -> bool:
    """Whether a raw value is (or equals) one that came from a secret, so must not be shown."""
    return isinstance(value, str) and value in secrets
