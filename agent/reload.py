"""The live configuration and its reload (SIGHUP): validate the whole file, then swap at once.

Services hold a ``LiveConfig`` and read ``live.current`` whenever they act, so a reload applies
to the next decision without restarting anything; the log level is applied here. A file that
fails validation changes nothing (the metrics and STATUS= show ``last_reload_ok``).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from agent.config import Config, ConfigError, load_config, restart_required

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class ReloadResult:
    ok: bool
    error: str | None = None
    needs_restart: tuple[str, ...] = ()  # changed keys the running process cannot apply


@dataclass
class LiveConfig:
    """The configuration in force; replaced whole by a successful reload."""

    current: Config
    last_reload_ok: bool = True
    last_reload_at: float = field(default_factory=time.time)

    def reload(self) -> ReloadResult:
        """Re-read the file the current config came from; keep the old one on any error."""
        path = self.current.path
        try:
            new = load_config(path)
        except ConfigError as exc:
            self.last_reload_ok = False
            log.error("reload failed, keeping the running configuration: %s", exc)
            return ReloadResult(ok=False, error=str(exc))
        needs_restart = tuple(restart_required(self.current, new))
        for key in needs_restart:
            log.warning("reload: %s changed but only takes effect after a restart", key)
        if new.server.log_level != self.current.server.log_level:
            logging.getLogger().setLevel(new.server.log_level.upper())  # applies at once
        self.current = new
        self.last_reload_ok = True
        self.last_reload_at = time.time()
        log.info("configuration reloaded from %s", path)
        return ReloadResult(ok=True, needs_restart=needs_restart)
