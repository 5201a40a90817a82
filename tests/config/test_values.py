"""agent/config/values.py: durations, sizes and addresses, parsed and formatted back exactly."""

from __future__ import annotations

from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.config import format_duration, format_size, parse_duration, parse_listen, parse_size


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30s", 30),
        ("5m", 300),
        ("1h30m", 5400),
        ("7d", 604800),
        ("250ms", 0.25),
        ("90", 90),
        ("1.5h", 5400),
        ("1m1ms", 60.001),
        ("0s", 0),
    ],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["10x", "", "h", "1h 30m", "-5s", "1.h", "s5", "1H", "5min"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration(text)


units = st.integers(min_value=0, max_value=10_000)


@given(days=units, hours=units, minutes=units, seconds=units, millis=units)
def test_generated_durations_round_trip(
    days: int, hours: int, minutes: int, seconds: int, millis: int
) -> None:
    parts = zip((days, hours, minutes, seconds, millis), ("d", "h", "m", "s", "ms"), strict=True)
    text = "".join(f"{count}{unit}" for count, unit in parts if count) or "0s"
    total_ms = (((days * 24 + hours) * 60 + minutes) * 60 + seconds) * 1000 + millis
    parsed = parse_duration(text)
    assert parsed == float(Fraction(total_ms, 1000))
    assert parse_duration(format_duration(parsed)) == parsed


@given(st.floats(min_value=0, max_value=1e12, allow_nan=False, allow_infinity=False))
def test_any_duration_formats_back_exactly(seconds: float) -> None:
    assert parse_duration(format_duration(seconds)) == seconds


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("2GiB", 2 * 1024**3),
        ("512MiB", 512 * 1024**2),
        ("1GB", 10**9),
        ("100k", 100_000),
        ("100K", 100_000),
        ("4096", 4096),
        ("1.5GiB", 3 * 1024**3 // 2),
        ("10B", 10),
        ("2gib", 2 * 1024**3),
        ("1 TiB", 1024**4),
        ("64KiB", 65536),
    ],
)
def test_parse_size(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["2GX", "GiB", "5iB", "-1", "1 0", "", "2 G iB"])
def test_parse_size_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="not a size"):
        parse_size(text)


@given(st.integers(min_value=0, max_value=2**60))
def test_sizes_round_trip(size: int) -> None:
    assert parse_size(format_size(size)) == size


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("0.0.0.0:8080", ("0.0.0.0", 8080)),
        ("[::1]:80", ("::1", 80)),
        ("localhost:0", ("localhost", 0)),
        ("gantry.example.com:443", ("gantry.example.com", 443)),
    ],
)
def test_parse_listen(text: str, parsed: tuple[str, int]) -> None:
    assert parse_listen(text) == parsed
