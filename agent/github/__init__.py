"""Everything GitHub-facing: App/token authentication and the REST client."""
