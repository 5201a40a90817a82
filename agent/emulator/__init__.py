"""A local stand-in for GitHub, strict enough to prove gantryd against (docs/design.md §7).

Layout, lower layers first (each imports only from those above it):

- `errors`, `jwt`, `models`, `jitconfig`, `webhooks` — GitHub's error answers, App JWT checks,
  the records and their JSON, the JIT config format, signed webhook deliveries and `Faults`;
- `scaleset_models`, `scalesets` — the Actions service behind runner scale sets (records;
  `ActionsService`, which `state` owns as ``Emulator.actions``);
- `state` — `Emulator`: all state and GitHub's rules, with a Python API for tests;
- `asgi` — a raw ASGI app (routing, lifespan); `rest`, `runs`, `repos`, `deliveries`,
  `checks_rest`, `broker`, `control` — the route tables for GitHub's REST API, the stand-in
  runner's protocol and the test/demo control API; `headers`, `ratelimit` — GitHub's edge rules
  (User-Agent, API version) and rate limits in front of them; `actions_service` — the
  scale-set protocol's routes (REST side and Actions service);
- `server` — `serve_emulator` (hypercorn, trio worker); `cli` — ``python -m agent.emulator``.

Facts come from docs/github.md; code cites its sections as "§n.n".
"""

from agent.emulator.models import Conclusion, Job, JobStatus
from agent.emulator.server import build_app, serve_emulator
from agent.emulator.state import Emulator
from agent.emulator.webhooks import Faults, signature_256

__all__ = [
    "Conclusion",
    "Emulator",
    "Faults",
    "Job",
    "JobStatus",
    "build_app",
    "serve_emulator",
    "signature_256",
]
