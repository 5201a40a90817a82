"""REST paths built from names that arrive in payloads: validated to GitHub's rules, then quoted.

Every path gantryd sends to GitHub that holds an owner, a repository, a ref or any other value
from outside is built here, so a name such as ``../../../orgs/evil`` (issue 13 §7: a signed
payload made gantryd call the organization-level ``generate-jitconfig``) fails before any URL
exists. GitHub's rules: an owner (user or organization login) is 1 to 39 ASCII letters, digits
and hyphens, starting with a letter or digit (new accounts also may not end with a hyphen or
double it, but older accounts do, and managed users end in ``_shortcode``, so those two are
allowed); a repository name is 1 to 100 of letters, digits, ``.``, ``-``, ``_`` and never ``.``
or ``..``. Anything else in a path (refs, shas) is percent-quoted as one segment, ``/``
included.
"""

from __future__ import annotations

import re
from urllib.parse import quote

_OWNER = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,38}")
_REPO = re.compile(r"[A-Za-z0-9._-]{1,100}")


class InvalidName(ValueError):
    """A name that GitHub would never give an owner or a repository."""

    def __init__(self, kind: str, value: str) -> None:
        super().__init__(f"{kind} {value[:120]!r} is not a valid GitHub {kind} name")
        self.kind = kind
        self.value = value


def check_owner(owner: str) -> str:
    """``owner`` unchanged when it is a valid user or organization login, else InvalidName."""
    if not _OWNER.fullmatch(owner):
        raise InvalidName("owner", owner)
    return owner


def check_full_name(full_name: str) -> str:
    """``full_name`` ("owner/name") unchanged when both parts follow GitHub's rules."""
    owner, slash, name = full_name.partition("/")
    if not slash:
        raise InvalidName("repository", full_name)
    check_owner(owner)
    if not _REPO.fullmatch(name) or name in (".", ".."):
        raise InvalidName("repository", full_name)
    return full_name


def segment(value: str | int) -> str:
    """One path segment, percent-quoted (``/`` too), so a value never adds a level."""
    return quote(str(value), safe="")


def repo_path(full_name: str, *parts: str | int) -> str:
    """``/repos/{owner}/{name}/…`` for a validated repository; ``parts`` are quoted."""
    owner, _, name = check_full_name(full_name).partition("/")
    return "/".join(["/repos", segment(owner), segment(name), *map(segment, parts)])


def org_path(org: str, *parts: str | int) -> str:
    """``/orgs/{org}/…`` for a validated organization login; ``parts`` are quoted."""
    return "/".join(["/orgs", segment(check_owner(org)), *map(segment, parts)])
