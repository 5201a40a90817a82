"""gantryd: GitHub Actions jobs in fresh, locked-down Docker containers on one build server.

General layout (dependencies point one way; config is passed in, never global):

- ``orchestrator/`` — the Orchestrator Manager: ``webhook`` (intake) -> ``queue`` <-
  ``scheduler`` (claim order, priority, fairness) -> ``container.pool_manager``;
  ``status_reporter`` drains the outbox; ``reconciler`` repairs what webhooks miss.
  ``job_parser`` turns payloads into jobs.
- ``queue/`` — the Job Queue: one interface (``base``), SQLite (default) and Redis backends.
- ``db`` — SQLite connection handling (queue and local state databases), on ``storage/``:
  storage errors, the worker thread and the group commit, shared by ``db`` and ``queue``.
- ``container/`` — the Container Pool Manager: ``pool_manager`` and its helpers, the pure
  ``capacity`` and ``policy``, ``lifecycle``, ``security``, ``secret_injection``, ``monitoring``
  and ``docker_api`` (the only importer of docker-py); its own ``__init__`` has the layering.
- ``github/`` — App/token auth and the REST client. ``emulator/`` — GitHub's stand-in.
- ``ops/`` — the operator's side: the admin socket (``protocol`` shared by ``admin_server`` and
  ``admin_client``; ``commands`` and ``tables`` for the CLI), ``metrics`` with its ``sampler``,
  and ``services``, which starts them in the daemon.
- ``config``, ``reload``, ``daemon`` (the root nursery), ``systemd``, ``logs``, ``cli``.
"""

__version__ = "0.1.0"
