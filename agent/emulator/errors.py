"""GitHub's error answers, as one exception the HTTP layer turns into a response.

GitHub answers errors with ``{"message": ..., "documentation_url": ...}`` (plus ``"status"`` as
a string in current responses) and the matching status code; the messages below are the ones
GitHub sends, quoted in reference/github-api.md (§3.2, §3.4, §5.1, §5.2) or observed in client
issues where the reference is silent (marked there).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

REST_DOCS = "https://docs.github.com/rest"


class GitHubError(Exception):
    """An error answer exactly as GitHub would send it."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        documentation_url: str = REST_DOCS,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(f"{status} {message}")
        self.status = status
        self.message = message
        self.documentation_url = documentation_url
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        return {
            "message": self.message,
            "documentation_url": self.documentation_url,
            "status": str(self.status),
        }


def bad_credentials() -> GitHubError:
    """Unknown or expired installation token (reference §5.2: "Expired token → 401")."""
    return GitHubError(401, "Bad credentials")


def requires_authentication() -> GitHubError:
    return GitHubError(401, "Requires authentication")


def not_found(docs: str = REST_DOCS) -> GitHubError:
    """GitHub hides what a token may not see behind 404, never 403 (private repositories)."""
    return GitHubError(404, "Not Found", documentation_url=docs)


def not_accessible(permission: str, level: str, docs: str = REST_DOCS) -> GitHubError:
    """The installation lacks a permission: 403, naming it in X-Accepted-GitHub-Permissions.

    Message and header as GitHub sends them for integrations (reference §3.1 lists which
    permission each runner endpoint needs; §5.3 the App's set).
    """
    return GitHubError(
        403,
        "Resource not accessible by integration",
        documentation_url=docs,
        headers={"X-Accepted-GitHub-Permissions": f"{permission}={level}"},
    )


def invalid_request(detail: str, docs: str = REST_DOCS) -> GitHubError:
    """A body failing the endpoint's JSON schema: GitHub's "Invalid request." 422 form."""
    return GitHubError(422, f"Invalid request.\n\n{detail}", documentation_url=docs)


def problems_parsing_json(docs: str = REST_DOCS) -> GitHubError:
    return GitHubError(400, "Problems parsing JSON", documentation_url=docs)
