"""Runner containers: the pool supervisor, their lifecycle, hardening, and the Docker wrapper.

Layering: pool_manager -> lifecycle -> (security, docker_api); monitoring feeds Docker events to
the pool manager. Only docker_api imports docker-py.
"""
