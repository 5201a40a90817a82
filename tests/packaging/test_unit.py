"""The systemd unit as shipped (systemd/gantryd.service, installed unchanged by packaging/)."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def service_settings() -> dict[str, list[str]]:
    """Every ``Key=value`` of the unit's [Service] section, values in file order."""
    settings: dict[str, list[str]] = {}
    section = ""
    for line in (ROOT / "systemd" / "gantryd.service").read_text().splitlines():
        line = line.strip()
        if line.startswith("["):
            section = line
        elif section == "[Service]" and "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            settings.setdefault(key, []).append(value)
    return settings


def test_the_unit_raises_the_descriptor_limit() -> None:
    """Issue 13 §9: no LimitNOFILE left gantryd at the soft 1024 (EMFILE under 1,100 slow
    connections)."""
    (value,) = service_settings().get("LimitNOFILE", ["0"])
    soft, _, hard = value.partition(":")
    assert int(soft) >= 65536
    assert hard == "" or int(hard) >= int(soft)
