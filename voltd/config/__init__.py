"""Configuration: one TOML file turned into typed, validated settings, or every mistake at once.

The operator fixes a config by reading our messages, so each problem names the file, the key
path and what was expected, and all of them are reported together: a broken config should take
one edit, not one restart per typo. Nothing here raises a traceback for bad input, and no
value that came from a `${env:…}`/`${file:…}` secret is ever echoed back.

One module per concept; each imports only those above it in this list:

- `errors`: ConfigError, key paths, values shown in messages, pydantic errors in plain words.
- `defaults`: the value of every key the file may leave out, written once.
- `values`: parsers for durations, phone numbers, number globs and listen addresses.
- `paths`: files named in the config, relative to it, checked readable, named safely.
- `secrets`: `${env:…}`/`${file:…}` resolved, and remembered so they are never shown.
- `model`: the typed `Config`, and the pydantic models that check the file's tables.
- `checks`: checks that involve several keys (TLS pair, ports, retry delays, route names).
- `loader`: `load`, from a path to a Config or to every problem in the file's order.

The match keys are shared with routing and events, so they live in `voltd.vocabulary`; they
are re-exported here, as is everything other code imports from `voltd.config`.
"""

from __future__ import annotations

from voltd.config.errors import ConfigError, Loc, format_key_path, one_line, validation_problems
from voltd.config.loader import load
from voltd.config.model import (
    # Read by the tests as `voltd.config._TOP_KEYS` and so on: the keys each table accepts.
    _ADMIN_KEYS,  # noqa: F401
    _DEFAULTS_KEYS,  # noqa: F401
    _RETRY_KEYS,  # noqa: F401
    _ROUTE_KEYS,  # noqa: F401
    _SERVER_KEYS,  # noqa: F401
    _SPOOL_KEYS,  # noqa: F401
    _TOP_KEYS,  # noqa: F401
    _VERIFY_KEYS,  # noqa: F401
    AdminConfig,
    Config,
    DefaultsConfig,
    MatchSpec,
    RetryConfig,
    RouteConfig,
    ServerConfig,
    SinkConfig,
    SpoolConfig,
    VerifyConfig,
)
from voltd.config.values import (
    DURATION_EXPECTED,
    NUMBER_EXPECTED,
    BindAddress,
    normalize_number,
    parse_duration,
)
from voltd.verify import ALGORITHMS, ENCODINGS  # noqa: F401  (the config's choices)
from voltd.vocabulary import CASELESS_KEYS, DIRECTIONS, GLOB_CHARS, MATCH_KEYS, NUMBER_KEYS

__all__ = [
    "CASELESS_KEYS",
    "DIRECTIONS",
    "DURATION_EXPECTED",
    "GLOB_CHARS",
    "MATCH_KEYS",
    "NUMBER_EXPECTED",
    "NUMBER_KEYS",
    "AdminConfig",
    "BindAddress",
    "Config",
    "ConfigError",
    "DefaultsConfig",
    "Loc",
    "MatchSpec",
    "RetryConfig",
    "RouteConfig",
    "ServerConfig",
    "SinkConfig",
    "SpoolConfig",
    "VerifyConfig",
    "format_key_path",
    "load",
    "normalize_number",
    "one_line",
    "parse_duration",
    "validation_problems",
]
