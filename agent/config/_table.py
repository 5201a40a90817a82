"""The machinery under the loader: one TOML table at a time, with typed getters.

``Table``'s getters return the default when a key is absent and raise ``ConfigError`` naming
the dotted key (``pool "gpu".memory``, ``github.webhook_secret_files[2]``) unless the value has
the right type and range. ``check_keys`` rejects unknown keys with the likely intended one: a
spelling close to a known key, the key's real table, or the seed's JSON name's replacement.
``Loader`` is what every table shares: the file, the environment and the warnings collected.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import math
import re
import stat
from collections.abc import Callable, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import TypeVar

from agent.config.schema import (
    ConfigError,
    GitHubConfig,
    PoolConfig,
    PriorityRule,
    QueueConfig,
    SchedulerConfig,
    ServerConfig,
)
from agent.config.values import (
    DURATION_FORMS,
    format_size,
    parse_duration,
    parse_listen,
    parse_size,
)

_E = TypeVar("_E", bound=enum.Enum)

_ENV_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_TABLES: Mapping[str, str] = {  # top-level key -> how it is written
    "server": "[server]",
    "github": "[github]",
    "queue": "[queue]",
    "scheduler": "[scheduler]",
    "pool": "[[pool]]",
    "priority": "[[priority]]",
}
# The seed's JSON names (docs/design.md §6). They are rejected with the key to use rather than
# accepted as aliases: one spelling per setting, and the seed's retryDelay was milliseconds where
# a bare number here is seconds, so an alias would silently mean something 1000 times longer.
_SEED_NAMES: Mapping[str, str] = {
    "containerPool": "its settings are keys of each [[pool]] (min_idle, max_runners)",
    "jobQueue": "its settings are in [queue] (retry_attempts, retry_delay) and [scheduler] "
    "(concurrency)",
    "container": "its settings are keys of each [[pool]] (image, memory, cpus)",
    "minContainers": "write min_idle (in [[pool]]: warm idle runners kept ready)",
    "maxContainers": "write max_runners (in [[pool]], or in [scheduler] for all pools together)",
    "scaleUpThreshold": "gantryd has no equivalent: it starts a runner for each queued job, "
    "up to max_runners",
    "scaleDownThreshold": "gantryd has no equivalent: runners are single-use and idle warm "
    "runners are recycled after max_idle_age",
    "retryAttempts": "write retry_attempts (in [queue])",
    "retryDelay": 'write retry_delay (in [queue]) as a duration such as "30s"; the seed\'s '
    "value was in milliseconds",
    "baseImage": "write image (in [[pool]])",
    "resourceLimits": "write memory and cpus (in [[pool]])",
}


def _field_names(cls: type[object]) -> frozenset[str]:
    return frozenset(f.name for f in dataclasses.fields(cls))  # type: ignore[arg-type]


_TABLE_KEYS: Mapping[str, frozenset[str]] = {
    "server": _field_names(ServerConfig),
    "github": _field_names(GitHubConfig) | {"webhook_secret_file"},
    "queue": _field_names(QueueConfig),
    "scheduler": _field_names(SchedulerConfig),
    "pool": _field_names(PoolConfig),
    "priority": _field_names(PriorityRule),
}


def _toml_type(value: object) -> str:
    """The TOML name of a parsed value's type, with its article, for "got ..." messages."""
    match value:
        case bool():
            return "a boolean"
        case int():
            return "an integer"
        case float():
            return "a float"
        case str():
            return "a string"
        case list():
            return "an array"
        case dict():
            return "a table"
        case _:
            return "a date/time"


def _shown(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    text = f'"{value}"' if isinstance(value, str) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


class Loader:
    """What every table's validator shares: the file, the environment, collected warnings."""

    def __init__(self, path: Path, environ: Mapping[str, str]) -> None:
        self.path = path
        self.base = path.absolute().parent
        self.environ = environ
        self.warnings: list[str] = []

    def error(self, key: str, problem: str) -> ConfigError:
        return ConfigError(self.path, key, problem)

    def warn(self, key: str, problem: str) -> None:
        self.warnings.append(f"{key}: {problem}")


class Table:
    """One TOML table under validation: typed getters whose errors name the dotted key.

    Each getter returns the default when the key is absent and raises ConfigError otherwise
    unless the value has the right type and range.
    """

    def __init__(self, loader: Loader, where: str, raw: Mapping[str, object]) -> None:
        self.loader = loader
        self.where = where
        self.raw = raw

    def key(self, name: str) -> str:
        return f"{self.where}.{name}" if self.where else name

    def error(self, name: str, problem: str) -> ConfigError:
        return self.loader.error(self.key(name), problem)

    def warn(self, name: str, problem: str) -> None:
        self.loader.warn(self.key(name), problem)

    def has(self, name: str) -> bool:
        return name in self.raw

    def check_keys(self, kind: str) -> None:
        """Reject keys this kind of table does not have, naming the likely intended one."""
        known = _TABLE_KEYS[kind] if kind else frozenset(_TABLES)
        for name in self.raw:
            if name not in known:
                raise self.error(name, "unknown key; " + _unknown_key_hint(name, kind, known))

    def get(self, name: str, ok: Callable[[object], bool], expected: str) -> object:
        value = self.raw.get(name)
        if value is not None and not ok(value):
            raise self.error(
                name, f"expected {expected}, got {_toml_type(value)} ({_shown(value)})"
            )
        return value

    def required(self, name: str, what: str) -> None:
        if name not in self.raw:
            raise self.error(name, f"missing; {what}")

    def string(
        self,
        name: str,
        default: str,
        *,
        choices: tuple[str, ...] = (),
        pattern: re.Pattern[str] | None = None,
        rule: str = "",
    ) -> str:
        value = self.get(name, lambda v: isinstance(v, str), "a string")
        if not isinstance(value, str):
            return default
        if choices and value not in choices:
            allowed = ", ".join(f'"{c}"' for c in choices)
            raise self.error(name, f'"{value}" is not one of {allowed}')
        if pattern is not None and not pattern.fullmatch(value):
            raise self.error(name, f'"{value}" is not valid: {rule}')
        return value

    def choice(self, name: str, default: _E) -> _E:
        values = tuple(str(member.value) for member in type(default))
        return type(default)(self.string(name, str(default.value), choices=values))

    def integer(self, name: str, default: int, *, minimum: int | None = 0) -> int:
        value = self.get(name, is_integer, "an integer")
        if not isinstance(value, int):
            return default
        if minimum is not None and value < minimum:
            raise self.error(name, _too_small(value, minimum))
        return value

    def number(
        self, name: str, default: float, *, minimum: float, maximum: float, why: str = ""
    ) -> float:
        value = self.get(name, is_number, "a number")
        if not isinstance(value, int | float):
            return default
        if not minimum <= value <= maximum:
            limits = f"must be between {minimum:g} and {maximum:g}{why}"
            raise self.error(name, f"{limits}, got {value:g}")
        return float(value)

    def boolean(self, name: str, default: bool) -> bool:
        value = self.get(name, lambda v: isinstance(v, bool), "a boolean (true or false)")
        return value if isinstance(value, bool) else default

    def duration(self, name: str, default: float, *, allow_zero: bool = False) -> float:
        value = self.get(
            name, lambda v: isinstance(v, str) or is_number(v), f"a duration ({DURATION_FORMS})"
        )
        if isinstance(value, str):
            try:
                seconds = parse_duration(value)
            except ValueError as exc:
                raise self.error(name, str(exc)) from None
        elif not isinstance(value, int | float):
            return default
        else:
            seconds = float(value)
            if not math.isfinite(seconds) or seconds < 0:
                raise self.error(name, f"{_shown(value)} is not a duration; write {DURATION_FORMS}")
        if seconds == 0 and not allow_zero:
            raise self.error(name, "must be longer than 0")
        return seconds

    def size(self, name: str, default: int, *, minimum: int = 1) -> int:
        value = self.get(name, lambda v: isinstance(v, str) or is_integer(v), "a size")
        if isinstance(value, str):
            try:
                size = parse_size(value)
            except ValueError as exc:
                raise self.error(name, str(exc)) from None
        elif isinstance(value, int):
            size = value
        else:
            return default
        if size < minimum:
            shown = _shown(value)
            raise self.error(name, f"{shown} is less than the minimum, {format_size(minimum)}")
        return size

    def listen(self, name: str, default: str) -> str:
        value = self.string(name, default)
        try:
            parse_listen(value)
        except ValueError as exc:
            raise self.error(name, str(exc)) from None
        return value

    def path(self, name: str, default: Path | None = None) -> Path | None:
        value = self.string(name, "")
        if name not in self.raw:
            return default
        if not value:
            raise self.error(name, "must not be empty")
        return self.resolve(name, value)

    def resolve(self, key: str, value: str) -> Path:
        """``${VAR}`` expanded from the environment, then relative to the config file's dir."""

        def expand(match: re.Match[str]) -> str:
            variable = match.group(1)
            if variable not in self.loader.environ:
                hint = " (systemd sets it for LoadCredential=)" if "CREDENTIALS" in variable else ""
                raise self.error(key, f"environment variable {variable} is not set{hint}")
            return self.loader.environ[variable]

        return self.loader.base / _ENV_REFERENCE.sub(expand, value)

    def strings(
        self, name: str, *, pattern: re.Pattern[str] | None = None, rule: str = ""
    ) -> tuple[str, ...]:
        """An array of non-empty strings without duplicates (case-insensitive)."""
        value = self.get(name, lambda v: isinstance(v, list), "an array of strings")
        if not isinstance(value, list):
            return ()
        seen: dict[str, int] = {}
        for index, item in enumerate(value, 1):
            item_key = f"{name}[{index}]"
            if not isinstance(item, str):
                raise self.error(item_key, f"expected a string, got {_toml_type(item)}")
            if not item.strip():
                raise self.error(item_key, "must not be empty")
            if item.lower() in seen:
                raise self.error(item_key, f'"{item}" is listed twice')
            if pattern is not None and not pattern.fullmatch(item):
                raise self.error(item_key, f'"{item}" is not valid: {rule}')
            seen[item.lower()] = index
        return tuple(value)

    def mapping(self, name: str) -> Mapping[str, str]:
        value = self.get(name, lambda v: isinstance(v, dict), "a table of strings")
        if not isinstance(value, dict):
            return MappingProxyType({})
        for item_name, item in value.items():
            if not isinstance(item, str):
                raise self.error(
                    f"{name}.{item_name}",
                    f"expected a string, got {_toml_type(item)} ({_shown(item)})",
                )
        return MappingProxyType(dict(value))

    def credential(self, name: str, path: Path, *, pem: bool = False) -> None:
        """A secret file must exist, be readable and non-empty; warn if others can read it."""
        try:
            mode = path.stat().st_mode
            if not stat.S_ISREG(mode):
                raise self.error(name, f"{path} is not a regular file")
            data = path.read_bytes()
        except FileNotFoundError:
            raise self.error(name, f"{path} does not exist") from None
        except OSError as exc:
            raise self.error(name, f"cannot read {path}: {exc.strerror}") from None
        if not data.strip():
            raise self.error(name, f"{path} is empty")
        if pem and b"PRIVATE KEY-----" not in data:
            raise self.error(
                name,
                f"{path} is not a PEM private key (GitHub App settings: Generate a private key)",
            )
        if mode & 0o077:
            self.warn(
                name,
                f"{path} has mode {stat.S_IMODE(mode):04o}: group or others can use it; "
                f"chmod 600 {path}",
            )


def is_integer(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _too_small(value: int, minimum: int) -> str:
    if minimum == 0:
        return f"must not be negative, got {value}"
    return f"must be at least {minimum}, got {value}"


def _unknown_key_hint(name: str, kind: str, known: frozenset[str]) -> str:
    """The seed's name, a key of another table, or the closest spelling of a known key."""
    if name in _SEED_NAMES:
        return f"this is the seed's name: {_SEED_NAMES[name]}"
    snake = re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", name).lower()
    if snake != name and snake in known:
        return f"gantryd keys are snake_case: write {snake}"
    homes = [
        _TABLES[other] for other, keys in _TABLE_KEYS.items() if name in keys and other != kind
    ]
    if homes:
        return f"{name} belongs in {' or '.join(homes)}"
    close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.6)
    if not close and len(name) >= 3:
        close = sorted(k for k in known if k.startswith(name) or name.startswith(k))
    if close:
        return f"did you mean {close[0]}?"
    return "known keys: " + ", ".join(sorted(known))


def get_table(loader: Loader, document: Mapping[str, object], name: str) -> Table:
    raw = document.get(name, {})
    if not isinstance(raw, dict):
        raise loader.error(name, f"expected a table ({_TABLES[name]}), got {_toml_type(raw)}")
    table = Table(loader, name, raw)
    table.check_keys(name)
    return table


def array_of_tables(loader: Loader, document: Mapping[str, object], name: str) -> list[Table]:
    raw = document.get(name, [])
    if not isinstance(raw, list) or not all(isinstance(item, dict) for item in raw):
        spelled = "a table" if isinstance(raw, dict) else _toml_type(raw)
        raise loader.error(name, f"expected an array of tables ({_TABLES[name]}), got {spelled}")
    return [Table(loader, f"{name}[{index}]", item) for index, item in enumerate(raw, 1)]
