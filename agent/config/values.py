"""Value formats of the file: durations, sizes and listen addresses, both ways; name forms.

Durations are strings such as ``"30s"``, ``"5m"``, ``"1h30m"``, ``"7d"`` (or a bare number of
seconds); sizes are strings such as ``"512MiB"``, ``"2GiB"``, ``"1GB"`` (or a bare number of
bytes); ``"GiB"`` is 1024-based and ``"GB"`` 1000-based. Parsed values are seconds (float) and
bytes (int); the ``format_*`` twins write a value back so that parsing it gives it exactly.
Every parser raises ValueError with a message that shows the forms it accepts. ``NAME`` (pools,
prefixes, the instance), ``REPOSITORY`` and ``ORGANIZATION`` are the name forms the validators
of several tables check against.
"""

from __future__ import annotations

import ipaddress
import math
import re
from decimal import Decimal
from fractions import Fraction

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,31}")
NAME_RULE = "use 1-32 letters, digits, '_', '.' or '-', starting with a letter or digit"
REPOSITORY = re.compile(r"[A-Za-z0-9-]{1,39}/[A-Za-z0-9_.-]{1,100}")
ORGANIZATION = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,38})")

_DURATION_UNITS = {
    "d": Fraction(86400),
    "h": Fraction(3600),
    "m": Fraction(60),
    "s": Fraction(1),
    "ms": Fraction(1, 1000),
}
_NUMBER = r"\d+(?:\.\d+)?"
_DURATION_PART = re.compile(rf"({_NUMBER})(ms|s|m|h|d)")  # "ms" before "m": alternation order
_DURATION = re.compile(rf"(?:{_NUMBER}(?:ms|s|m|h|d))+")
_SIZE = re.compile(rf"({_NUMBER}) ?(?:([kmgt])(i?)b?|b)?", re.IGNORECASE)
_SIZE_PREFIXES = "kmgt"
_HOSTNAME = re.compile(
    r"(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
)
DURATION_FORMS = '"30s", "5m", "1h30m", "7d", "250ms" or a number of seconds'
_SIZE_FORMS = '"512MiB", "2GiB", "1GB", "100k" or a number of bytes'


def parse_duration(text: str) -> float:
    """Seconds in ``text``: ``"1h30m"``, ``"250ms"``, ``"90"``; raises ValueError."""
    if re.fullmatch(_NUMBER, text):
        total = Fraction(text)
    elif _DURATION.fullmatch(text):
        parts = _DURATION_PART.findall(text)
        total = sum((Fraction(n) * _DURATION_UNITS[u] for n, u in parts), Fraction(0))
    else:
        raise ValueError(f'"{text}" is not a duration; write {DURATION_FORMS}')
    try:
        return float(total)
    except OverflowError:
        raise ValueError(f'"{text}" is too long a duration') from None


def format_duration(seconds: float) -> str:
    """``seconds`` as ``"1h30m"``, which ``parse_duration`` turns back into exactly ``seconds``."""
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"{seconds!r} is not a duration")
    millis = round(seconds * 1000)
    if float(Fraction(millis, 1000)) != seconds:
        # Not a whole number of milliseconds: plain decimal seconds, never "1e-05".
        return f"{Decimal(repr(seconds)):f}s"
    parts = []
    for unit in ("d", "h", "m", "s", "ms"):
        per = int(_DURATION_UNITS[unit] * 1000)
        count, millis = divmod(millis, per)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts) or "0s"


def parse_size(text: str) -> int:
    """Bytes in ``text``: ``"2GiB"`` (binary, 1024-based), ``"1GB"`` or ``"100k"`` (decimal,
    1000-based), ``"512"`` (bytes). Letters are case-insensitive; raises ValueError."""
    match = _SIZE.fullmatch(text)
    if match is None:
        raise ValueError(f'"{text}" is not a size; write {_SIZE_FORMS}')
    number, prefix, binary = match.groups()
    power = _SIZE_PREFIXES.index(prefix.lower()) + 1 if prefix else 0
    total = Fraction(number) * (1024 if binary else 1000) ** power
    if total.denominator != 1:
        raise ValueError(f'"{text}" is not a whole number of bytes')
    return int(total)


def format_size(size: int) -> str:
    """``size`` bytes in the largest unit that divides it exactly (``parse_size`` reads it)."""
    if size == 0:
        return "0B"
    for power in range(len(_SIZE_PREFIXES), 0, -1):
        prefix = _SIZE_PREFIXES[power - 1].upper()
        if size % 1024**power == 0:
            return f"{size // 1024**power}{prefix}iB"
        if size % 1000**power == 0:
            return f"{size // 1000**power}{'k' if prefix == 'K' else prefix}B"
    return f"{size}B"


def approx_size(size: int) -> str:
    """``size`` rounded for messages about measured amounts: "23.5GiB"."""
    power = min(max((size.bit_length() - 1) // 10, 0), len(_SIZE_PREFIXES))
    if power == 0:
        return f"{size}B"
    return f"{size / 1024**power:.1f}{_SIZE_PREFIXES[power - 1].upper()}iB"


def parse_listen(text: str) -> tuple[str, int]:
    """``(host, port)`` of ``"host:port"`` / ``"[v6]:port"``; port 0 picks a free port (tests)."""
    bracketed = re.fullmatch(r"\[([^\]]*)\]:(\d{1,5})", text)
    match = bracketed or re.fullmatch(r"([^:\[\]]*):(\d{1,5})", text)
    if match is None:
        if text.count(":") > 1 and "[" not in text:
            raise ValueError(f'"{text}": put an IPv6 address in brackets, e.g. "[::1]:8080"')
        raise ValueError(f'"{text}" is not "host:port", e.g. "0.0.0.0:8080" or "[::]:8080"')
    host, port_text = match.groups()
    port = int(port_text)
    if port > 65535:
        raise ValueError(f'"{text}": port {port} is more than 65535')
    if bracketed is not None:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f'"{text}": "{host}" is not an IPv6 address') from None
    elif re.fullmatch(r"[\d.]+", host):
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            raise ValueError(f'"{text}": "{host}" is not an IPv4 address') from None
    elif not _HOSTNAME.fullmatch(host):
        raise ValueError(
            f'"{text}": "{host}" is not a host name or address (use "0.0.0.0" for all)'
        )
    return host, port
