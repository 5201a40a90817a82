"""Runner containers: the pool supervisor, their lifecycle, hardening, and the Docker wrapper.

Layering (a module imports only modules of later lines):

- ``pool_manager`` — the supervisor: places claimed jobs, keeps the warm pool, handles Docker's
  events, and wires the helpers below.
- ``maintenance`` (the one-second pass: heartbeats, timeouts, image holds, refill; usage
  samples) -> ``runner_groups`` (repositories an organization pool never serves).
- ``adoption`` (what a previous run left) -> ``assignment`` (intake's job events) ->
  ``provisioning`` (bring a runner up, with ``images``) -> ``removal`` (scale-down, failure,
  retirement) -> ``registry`` (the one map of runners, and their rows).
- ``runner_spec`` (a new runner and its container spec) -> ``secret_injection``, ``security``.
- Pure decisions, tested without Docker: ``capacity`` (free slots, memory room, repository
  caps) and ``policy`` (what to do with a runner now).
- ``lifecycle`` (``Runner``, its states and counters), ``store`` (the local state database),
  ``leases``, ``gc``, ``monitoring`` (events and health), ``disk`` (the measured disk limit),
  ``events`` (``JobEvent``, all intake imports of this package).
- ``docker_api`` — the only importer of docker-py.
"""
