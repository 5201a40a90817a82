"""GitHub's error answers, as one exception the HTTP layer turns into a response.

GitHub answers errors with ``{"message": ..., "documentation_url": ...}`` (plus ``"status"`` as
a string in current responses) and the matching status code; the messages below are the ones
GitHub sends, quoted in docs/github.md (§3.2, §3.4, §5.1, §5.2) or observed in client
issues where the reference is silent (marked there).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
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
        errors: Sequence[Mapping[str, Any]] = (),
    ) -> None:
        super().__init__(f"{status} {message}")
        self.status = status
        self.message = message
        self.documentation_url = documentation_url
        self.headers = dict(headers or {})
        self.errors = [dict(error) for error in errors]  # "Validation Failed" details

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"message": self.message}
        if self.errors:
            body["errors"] = self.errors
        body["documentation_url"] = self.documentation_url
        body["status"] = str(self.status)
        return body


class BrokerError(GitHubError):
    """An error of the runner's broker, in its own shape: the runner's ``BrokerHttpClient``
    (actions/runner src/Sdk/WebApi/WebApi/BrokerHttpClient.cs) reads ``errorKind`` of bodies
    whose ``source`` is ``actions-broker-listener`` and maps it to an exception
    (src/Sdk/RSWebApi/Contracts/BrokerError.cs, BrokerErrorKind.cs)."""

    def __init__(self, status: int, kind: str, message: str) -> None:
        super().__init__(status, message)
        self.kind = kind

    def body(self) -> dict[str, Any]:
        return {
            "source": "actions-broker-listener",
            "errorKind": self.kind,
            "statusCode": self.status,
            "errorMessage": self.message,
        }


class OAuthError(GitHubError):
    """The runner's token service answer for credentials it does not know: RFC 6749 §5.2
    ``invalid_client``, which the runner reads as "The runner registration has been deleted
    from the server" (actions/runner src/Runner.Listener/MessageListener.cs)."""

    def __init__(self) -> None:
        super().__init__(401, "invalid_client")

    def body(self) -> dict[str, Any]:
        return {"error": "invalid_client", "error_description": "Registration not found."}


def runner_not_found() -> BrokerError:
    """The runner was removed (deleted, its job done, or idle too long): RunnerNotFound, on
    which the runner prints "The runner no longer exists on the server" and exits."""
    return BrokerError(404, "RunnerNotFound", "Runner not found")


def session_invalid() -> BrokerError:
    return BrokerError(404, "RunnerSessionInvalid", "Runner session is no longer valid")


def version_too_old(version: str) -> BrokerError:
    """RunnerVersionTooOld: 403 and the message runners print (actions/runner issues #1991,
    #3381: "Runner version v2.317.0 is deprecated and cannot receive messages.")."""
    return BrokerError(
        403,
        "RunnerVersionTooOld",
        f"Runner version v{version} is deprecated and cannot receive messages.",
    )


def bad_credentials() -> GitHubError:
    """Unknown or expired installation token (docs/github.md §5.2: "Expired token → 401")."""
    return GitHubError(401, "Bad credentials")


def requires_authentication() -> GitHubError:
    return GitHubError(401, "Requires authentication")


def not_found(docs: str = REST_DOCS) -> GitHubError:
    """GitHub hides what a token may not see behind 404, never 403 (private repositories)."""
    return GitHubError(404, "Not Found", documentation_url=docs)


def not_accessible(permission: str, level: str, docs: str = REST_DOCS) -> GitHubError:
    """The installation lacks a permission: 403, naming it in X-Accepted-GitHub-Permissions.

    Message and header as GitHub sends them for integrations (docs/github.md §3.1 lists which
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
