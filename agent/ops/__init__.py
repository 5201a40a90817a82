"""The operator's side of gantryd: the admin socket (both ends), metrics, and the wiring that
starts them in the daemon's root nursery. Nothing here decides how jobs are served.

Layout (imports point down the list; nothing below ``agent.ops`` imports it):

- ``services`` — ``run_operations``: the one service the daemon starts for all of this.
- admin socket: ``admin_server`` (ASGI app on ``<runtime_dir>/admin.sock``) and, for the CLI,
  ``commands`` (the ``gantryd status|jobs|drain|resume|gc|secrets`` bodies) -> ``admin_client``
  and ``tables``; both ends -> ``protocol`` (requests, messages, their typed JSON) and
  ``secrets_api`` (the ``/secrets`` endpoints, also run by the CLI when gantryd is stopped).
- metrics: ``metrics_server`` (the ``/metrics`` listener) and ``sampler`` (gauges copied from
  their owners) -> ``metrics`` (the registry, collectors, ``CountingTransport``); ``usage``
  (cgroup readings) feeds the sampler and ``gantryd status``.

Import from the modules themselves: this package re-exports nothing, so ``gantryd status`` does
not load the server side (hypercorn, prometheus_client).
"""
