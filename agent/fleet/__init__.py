"""Several gantryd hosts on one Redis: what they share beyond the queue (docs/fleet.md).

With ``[queue] backend = "redis"`` the daemon opens this host's ``membership.Fleet``:
``leases`` give a fleet-wide chore (reconciler, registration sweep) to one host at a time;
``ratelimits`` share the GitHub rate-limit budget per credential; ``hosts`` keeps each host's
heartbeat record for ``gantryd status --fleet``; ``ownership`` records runner owners and job
stakes, ``events`` gives each host an event stream so a job's webhooks reach the host that owns
its runner, and ``reporting`` keeps the check-run records with one host at a time reporting a job.

The Redis clients come from ``agent.storage.redis_connection`` (TLS, AUTH, Sentinel, retries).
With SQLite nothing here is opened and redis-py is never imported: a single host pays nothing.
"""
