"""The Orchestrator Manager's parts: webhook intake, job parsing, scheduling, reporting, and the
reconciler that recovers missed webhooks."""
