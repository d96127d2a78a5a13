"""Secrets: `${env:NAME}`, `${file:PATH}` and `${cred:NAME}` resolved before validation, and
never echoed.

- `${env:NAME}`: the environment variable NAME.
- `${file:PATH}`: the content of a file, PATH relative to the config file.
- `${cred:NAME}`: the systemd credential NAME, i.e. the file `$CREDENTIALS_DIRECTORY/NAME` that
  systemd makes from `LoadCredential=NAME:/path` (or `LoadCredentialEncrypted=`,
  `SetCredential=`, ...) in the unit. NAME must be a plain file name. Credentials are set up
  when the service starts: a changed credential needs `systemctl restart`, not a reload.

A file's (or credential's) one trailing newline (`\n` or `\r\n`) is removed: an editor adds it,
and it is not part of the secret.

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

#: What a message says instead of a value that came from a `${env:…}`/`${file:…}`/`${cred:…}`
#: secret.
_HIDDEN: Final = "value hidden: it comes from a secret"

#: Stands in for a value whose secret could not be resolved, so it is not judged twice.
_BROKEN: Final = object()
_REFERENCE = re.compile(r"\$\$\{|\$\{([^}]*)\}|\$\{")
_SECRET_HELP: Final = (
    "expected ${env:NAME}, ${file:PATH} or ${cred:NAME} (write $${ for a literal ${)"
)
#: The kinds of reference and what each one's argument is called in messages.
_KINDS: Final = {"env": "NAME", "file": "PATH", "cred": "NAME"}
#: The environment variable systemd sets to the directory holding the service's credentials.
_CREDENTIALS_DIRECTORY: Final = "CREDENTIALS_DIRECTORY"
#: Files larger than this are not secrets; only this much is read.
_MAX_SECRET_BYTES: Final = 1 << 20


class _Secrets:
    """Resolves `${env:…}`/`${file:…}`/`${cred:…}` in every string, remembering where
    secrets went."""

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
        if not sep or kind not in _KINDS:
            shown = kind if _BARE_KEY.fullmatch(kind or "-") and len(kind) <= 20 else "?"
            raise _Invalid(f"unknown kind of secret reference '${{{shown}:…}}'; {_SECRET_HELP}")
        if not arg:
            what = _KINDS[kind]
            raise _Invalid(f"empty secret reference '${{{kind}:}}'; expected ${{{kind}:{what}}}")
        if kind == "env":
            if arg not in os.environ:
                raise _Invalid(f"environment variable {one_line(arg)} is not set")
            return os.environ[arg]
        if kind == "cred":
            return _read_credential(arg)
        return _read_secret_file(_absolute(self.base, arg), "secret file")


def _read_credential(name: str) -> str:
    """The systemd credential `name`: `$CREDENTIALS_DIRECTORY/name`, as `${file:}` reads it."""
    if name in (".", "..") or "/" in name or "\0" in name:
        raise _Invalid(
            f"credential name {_quoted(name)} in '${{cred:…}}' is not a plain file name; "
            "expected ${cred:NAME} with the NAME of a LoadCredential=NAME:/path line "
            "(no '/', not '.' or '..')"
        )
    directory = os.environ.get(_CREDENTIALS_DIRECTORY)
    if not directory:
        raise _Invalid(
            f"cannot read credential {_quoted(name)}: ${_CREDENTIALS_DIRECTORY} is not set: "
            "not running under systemd with LoadCredential=; expected the unit to have "
            f"LoadCredential={one_line(name)}:/path/to/file (or set {_CREDENTIALS_DIRECTORY} "
            f"to a directory holding a file {_quoted(name)}, e.g. to run `voltd check` by hand)"
        )
    path = Path(os.path.abspath(directory)) / name
    if not os.path.lexists(path):
        raise _Invalid(
            f"credential {_quoted(name)} not found: no file {one_line(str(path))}; expected "
            f"LoadCredential={one_line(name)}:/path/to/file in the unit (or "
            "LoadCredentialEncrypted=/SetCredential=)"
        )
    return _read_secret_file(path, "credential file", "; expected UTF-8 text")


def _read_secret_file(path: Path, what: str, not_text_hint: str = "") -> str:
    """A secret file's text, without the one trailing newline an editor adds."""
    try:
        with open(path, "rb") as f:
            content = f.read(_MAX_SECRET_BYTES).decode("utf-8")
    except UnicodeDecodeError:  # a ValueError too: caught first
        shown = one_line(str(path))
        raise _Invalid(f"{what} {shown} is not UTF-8 text{not_text_hint}") from None
    except (OSError, ValueError) as e:
        shown = one_line(str(path))
        raise _Invalid(f"cannot read {what} {shown}: {_open_error(e)}") from None
    if content.endswith("\n"):  # the newline an editor adds is not part of the secret
        content = content[:-2] if content.endswith("\r\n") else content[:-1]
    return content


def _quoted(name: str) -> str:
    """A credential name for a message: quoted, escaped when it holds a line break."""
    return f"'{name}'" if name.isprintable() and "'" not in name else repr(name)


def _from_secret(value: Any, secrets: Collection[str]) -> bool:
    """Whether a raw value is (or equals) one that came from a secret, so must not be shown."""
    return isinstance(value, str) and value in secrets
