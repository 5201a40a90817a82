"""The live configuration and its reload (SIGHUP): validate the whole file, then swap at once.

Services hold a ``LiveConfig`` and read ``live.current`` whenever they act, so a reload applies
to the next decision without restarting anything; the log level is applied here. A file that
fails validation changes nothing (the metrics and STATUS= show ``last_reload_ok``).

Keys the schema marks *restart* (agent/config/schema.py) are read once at start: a reload that
changes one keeps running with the started value, logs a warning naming it and lists it in
``restart_pending`` (``gantryd status``) until a restart, or until the file has the started
value again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from agent.config import Config, ConfigError, load_config, restart_required

log = logging.getLogger(__name__)

Prepare = Callable[[Config], Callable[[], None]]
"""Loads what a new configuration needs beyond the file (the credentials it names) without
applying it, and returns the step that applies it once the new configuration is in force;
raises ConfigError to refuse the reload, which then changes nothing."""


@dataclass(frozen=True, kw_only=True)
class ReloadResult:
    ok: bool
    error: str | None = None
    needs_restart: tuple[str, ...] = ()  # restart keys whose file value is not in force


@dataclass
class LiveConfig:
    """The configuration in force; replaced whole by a successful reload."""

    current: Config
    last_reload_ok: bool = True
    last_reload_at: float = field(default_factory=time.time)
    # Dotted restart keys (``server.listen``, ``github.api_url``) whose value in the file
    # differs from the one the process started with: applied by the next restart.
    restart_pending: tuple[str, ...] = ()
    started: Config = field(init=False, repr=False)  # what the restart keys were read from

    def __post_init__(self) -> None:
        self.started = self.current

    def reload(self, prepare: Prepare | None = None) -> ReloadResult:
        """Re-read the file the current config came from; keep the old one on any error,
        including one ``prepare`` raises (then nothing it loaded is applied either)."""
        path = self.current.path
        try:
            new = load_config(path)
            apply = prepare(new) if prepare is not None else None
        except ConfigError as exc:
            self.last_reload_ok = False
            log.error("reload failed, keeping the running configuration: %s", exc)
            return ReloadResult(ok=False, error=str(exc))
        pending = tuple(restart_required(self.started, new))
        if pending:
            log.warning("reload: %s changed; restart gantryd to apply", ", ".join(pending))
        elif self.restart_pending:
            log.info("reload: the restart-only settings are back to the values in force")
        if new.server.log_level != self.current.server.log_level:
            logging.getLogger().setLevel(new.server.log_level.upper())  # applies at once
        self.current = new
        self.restart_pending = pending
        if apply is not None:
            apply()
        self.last_reload_ok = True
        self.last_reload_at = time.time()
        log.info("configuration reloaded from %s", path)
        return ReloadResult(ok=True, needs_restart=pending)
