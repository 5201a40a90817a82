"""Runner containers: the pool supervisor, their lifecycle, hardening, and the Docker wrapper.

Layering: pool_manager -> (lifecycle, store, gc, monitoring) -> (security, docker_api).
``store`` is this host's local state database (runners, per-job usage); ``monitoring`` follows
Docker events and the Engine's health; ``gc`` removes leftover labelled objects. Only docker_api
imports docker-py.
"""
