"""Several gantryd hosts on one Redis: what they share beyond the queue.

``connection`` makes every Redis client (TLS, AUTH, Sentinel, retries); ``leases`` gives a
fleet-wide chore (reconciler, registration sweep) to one host at a time and shares the GitHub
rate-limit budget per credential; ``hosts`` keeps each host's heartbeat record for
``gantryd status --fleet``. With the SQLite backend none of this is opened.
"""
