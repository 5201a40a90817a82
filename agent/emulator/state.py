"""The emulated GitHub: App, installations, tokens, runners, jobs and webhooks, in memory.

`Emulator` holds all state and enforces GitHub's rules; the HTTP modules (`rest`, `broker`,
`control`) only translate requests into its methods. Everything runs on one trio thread, so a
method either completes its change or raises `GitHubError` having changed nothing. Waiters are
woken through one `trio.Event` that is replaced after every change (`_notify`): no polling.

The rules, with their source in docs/github.md (§n.n below):

- App JWTs verified as in `agent.emulator.jwt` (§5.1); installation tokens last
  ``token_lifetime`` (1 h on GitHub, §5.2) and are then "Bad credentials" (401).
- A token only sees its installation's repositories (404 otherwise: they are private) and only
  acts with its permissions (403 naming the missing one; permission per endpoint from §3.1, §4).
- ``generate-jitconfig`` requires ``name`` (at most 64 characters), ``runner_group_id`` and
  1..100 ``labels`` (422), names are unique per scope (409) (§3.2); deleting a busy runner is
  refused with 422 (§3.4).
- A queued job goes to *any* connected idle runner whose labels are a case-insensitive superset of
  the job's and whose scope covers the job's repository — not necessarily the runner made for it
  (§2.1, §10 point 6, docs/design.md §1) — and, for an organization runner, whose runner group
  admits the repository (`RunnerGroup.admits`: no public repositories unless allowed, selected or
  private visibility), and, for a job whose runs-on names a group (``create_job(group=...)``),
  whose group is that one (§3.5: never in the payload, which has the labels only); otherwise the
  job stays queued. A JIT runner runs one job and is then removed
  (§3.2, §8.2); one that has taken no job is removed ``runner_idle_timeout`` after registration.
- A job naming an environment with required reviewers waits (``queued`` with status
  ``waiting``, then ``waiting``) until `review_job`; approved, it is ``queued`` again under the
  same id; rejected, or unreviewed for 30 days, it fails (§2.1, §2.4).
- Re-runs (`rerun_job`, `rerun_run`) create new jobs with new ids under the next ``run_attempt``,
  only once the run has completed (§4).
- Message polls of runners older than ``min_runner_version`` (off unless set) are refused as
  deprecated (§8.3), and no job is ever assigned to such a runner: a runner takes jobs only
  once its session's or a poll's version met the floor.
- ``workflow_job`` webhooks ``queued`` / ``waiting`` / ``in_progress`` / ``completed`` (§2.1)
  carry the job as it was at that moment (§2.2), signed, to every hook that covers the job, with
  one delivery GUID per event (`webhooks`).
"""

from __future__ import annotations

import base64
import dataclasses
import itertools
import json
import math
import random
import secrets
import string
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

import httpx
import trio
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey

from agent.emulator import errors
from agent.emulator.checks import Checks
from agent.emulator.errors import GitHubError
from agent.emulator.jitconfig import encode_jit_config
from agent.emulator.jwt import verify_app_jwt
from agent.emulator.models import (
    Account,
    AccountType,
    Conclusion,
    Deployment,
    Environment,
    GroupVisibility,
    Installation,
    InstallationToken,
    Job,
    JobStatus,
    Repository,
    Runner,
    RunnerGroup,
    RunnerScope,
    Session,
    account_json,
    deployment_json,
    job_json,
    parse_runner_version,
    repository_json,
)
from agent.emulator.ratelimit import RateLimits
from agent.emulator.scalesets import ActionsService
from agent.emulator.webhooks import (
    ZEN,
    Delivery,
    Faults,
    Hook,
    Outgoing,
    Sender,
    delivery_headers,
    encode_body,
    new_guid,
)

# What the App may do in every installation unless told otherwise (docs/github.md §5.3).
DEFAULT_PERMISSIONS: Mapping[str, str] = {
    "actions": "read",
    "administration": "write",
    "checks": "write",
    "metadata": "read",
    "organization_self_hosted_runners": "write",
    "statuses": "write",
}
_LEVELS = {"read": 1, "write": 2, "admin": 3}

SESSION_IDLE = 60.0  # seconds without a poll after which a runner's session is gone (offline)
MAX_LABELS = 100  # generate-jitconfig "Maximum items: 100" (§3.2)
MAX_RUNNER_NAME = 64  # characters (§3.2)
DEFAULT_RUNNER_IDLE_TIMEOUT = 300.0  # seconds a JIT runner may stay registered without a job
APPROVAL_TIMEOUT = 30 * 86400.0  # "If a job is not approved within 30 days, it will ... fail"
REAP_INTERVAL = 1.0  # seconds between `Emulator.reap` passes while the emulator runs
DEFAULT_GROUP_ID = 1  # repository runners and every org's "Default" group (§3.2)
SENDER = Account(login="octocat", id=583231, type=AccountType.USER)  # who "pushed" the jobs
PERSONAL_TOKEN_PREFIXES = ("ghp_", "github_pat_")  # classic and fine-grained tokens (§5.4)
_RUNS_DOCS = "https://docs.github.com/rest/actions/workflow-runs"
RERUN_JOB_DOCS = f"{_RUNS_DOCS}#re-run-a-job-from-a-workflow-run"
RERUN_RUN_DOCS = f"{_RUNS_DOCS}#re-run-a-workflow"


class Emulator:
    """GitHub, as far as gantryd can see it; see the module docstring for the rules.

    ``installations`` maps an installation id to the ``owner/repo`` names it covers; an App is
    installed on one account, so all of them must share one owner. Owners are organizations
    unless listed in ``user_accounts``; repositories are private unless listed in
    ``public_repositories``. ``clock`` gives epoch seconds (inject one to expire tokens, idle
    runners and reviews in tests). ``runner_idle_timeout`` is how long a JIT runner may stay
    registered without taking a job; ``min_runner_version`` (``"2.329.0"``) turns on the
    deprecated-version refusal, off by default because GitHub's floor is not a fixed version
    (it moves 30 days behind each release, docs/github.md §8.3-8.4). `run` (in a nursery)
    sends the webhooks and reaps; `serve_emulator` does both.
    """

    def __init__(
        self,
        *,
        app_id: int,
        app_public_key: RSAPublicKey,
        installations: Mapping[int, Sequence[str]],
        token_lifetime: float = 3600.0,
        clock: Callable[[], float] = time.time,
        client_id: str | None = None,
        user_accounts: Collection[str] = (),
        permissions: Mapping[int, Mapping[str, str]] | None = None,
        faults: Faults | None = None,
        seed: int | None = None,
        public_repositories: Collection[str] = (),
        runner_idle_timeout: float = DEFAULT_RUNNER_IDLE_TIMEOUT,
        min_runner_version: str | None = None,
    ) -> None:
        self.app_id = app_id
        self._public_key = app_public_key
        self._issuers = {str(app_id)} | ({client_id} if client_id else set())
        self.token_lifetime = token_lifetime
        self.runner_idle_timeout = runner_idle_timeout
        self.min_runner_version = (
            parse_runner_version(min_runner_version) if min_runner_version is not None else None
        )
        self._clock = clock
        self.faults = faults or Faults()
        self._rng = random.Random(seed)
        self.checks = Checks(clock=clock)  # check runs and statuses (checks, checks_rest)
        self.rate_limits = RateLimits(clock=clock, key_of=self.budget_key, rng=self._rng)
        self.base_url = "http://127.0.0.1"  # set by serve_emulator once the port is bound
        self._users = {login.lower() for login in user_accounts}
        self._public = {name.lower() for name in public_repositories}
        self._account_ids = itertools.count(9_919_000)
        self._repo_ids = itertools.count(376_034_443)
        self._runner_ids = itertools.count(1)
        self._group_ids = itertools.count(DEFAULT_GROUP_ID + 1)
        self._label_ids = itertools.count(1)
        self._hook_ids = itertools.count(292_430_182)
        self._job_ids = itertools.count(14_541_957_942)  # int64 range, as on GitHub (§2.2)
        self._run_ids = itertools.count(4_747_967_848)
        self._environment_ids = itertools.count(1_070_000_001)
        self._deployment_ids = itertools.count(875_096_709)
        self._accounts: dict[str, Account] = {}
        self._repos: dict[str, Repository] = {}
        self._installations: dict[int, Installation] = {}
        self._tokens: dict[str, InstallationToken] = {}
        self._groups: dict[str, list[RunnerGroup]] = {}
        self._labels: dict[str, int] = {}
        self._runners: dict[int, Runner] = {}
        self._jobs: dict[int, Job] = {}
        self._queued: dict[int, Job] = {}  # insertion order = the order jobs were queued
        self._waiting: dict[int, Job] = {}  # held for their environment's reviewers
        self._environments: dict[tuple[str, str], Environment] = {}  # (repo, name), lower-case
        self._hooks: list[Hook] = []
        self.deliveries: list[Delivery] = []
        self._changed = trio.Event()
        self._nursery: trio.Nursery | None = None
        self._sender: Sender | None = None
        # Runner scale sets (the Actions service); told below of every job change.
        self.actions = ActionsService(self, clock=clock)
        for installation_id, names in installations.items():
            self._install(installation_id, names, (permissions or {}).get(installation_id))
        unknown = self._public - set(self._repos)
        if unknown:
            raise ValueError(f"public_repositories not in any installation: {sorted(unknown)}")

    # ---------------------------------------------------------------- set-up

    def _install(
        self, installation_id: int, names: Sequence[str], permissions: Mapping[str, str] | None
    ) -> None:
        owners = {name.partition("/")[0].lower() for name in names}
        if len(owners) != 1 or any(name.count("/") != 1 for name in names):
            raise ValueError(
                f"installation {installation_id}: give 'owner/repo' names of one owner "
                f"(an App is installed on one account), got {list(names)!r}"
            )
        repos = [self._repository(name) for name in names]
        if any(i.account is repos[0].owner for i in self._installations.values()):
            raise ValueError(
                f"installation {installation_id}: the App is already installed on "
                f"{repos[0].owner.login} (one installation per account)"
            )
        self._installations[installation_id] = Installation(
            id=installation_id,
            account=repos[0].owner,
            repositories=tuple(repo.full_name for repo in repos),
            permissions=dict(permissions if permissions is not None else DEFAULT_PERMISSIONS),
        )

    def _repository(self, full_name: str) -> Repository:
        owner, _, name = full_name.partition("/")
        key = full_name.lower()
        if key not in self._repos:
            account = self._accounts.get(owner.lower())
            if account is None:
                kind = (
                    AccountType.USER if owner.lower() in self._users else AccountType.ORGANIZATION
                )
                account = Account(login=owner, id=next(self._account_ids), type=kind)
                self._accounts[owner.lower()] = account
                if kind is AccountType.ORGANIZATION:
                    default = RunnerGroup(id=DEFAULT_GROUP_ID, name="Default", default=True)
                    self._groups[owner.lower()] = [default]
            self._repos[key] = Repository(
                id=next(self._repo_ids), owner=account, name=name, private=key not in self._public
            )
        return self._repos[key]

    def add_runner_group(
        self,
        org: str,
        name: str,
        *,
        visibility: GroupVisibility | str = GroupVisibility.ALL,
        allows_public_repositories: bool = False,
        repositories: Collection[str] = (),
    ) -> RunnerGroup:
        """Create an organization runner group (an admin's job on GitHub; here for tests).

        As on GitHub, a new group does not admit public repositories unless told to.
        ``repositories`` (full names) are the selected ones of a ``selected`` group.
        """
        groups = self._groups.get(org.lower())
        if groups is None:
            raise ValueError(f"{org!r} is not an organization known to the emulator")
        group = RunnerGroup(id=next(self._group_ids), name=name)
        groups.append(group)
        self.set_runner_group_policy(
            org,
            group.id,
            visibility=visibility,
            allows_public_repositories=allows_public_repositories,
            repositories=repositories,
        )
        return group

    def set_runner_group_policy(
        self,
        org: str,
        group_id: int,
        *,
        visibility: GroupVisibility | str | None = None,
        allows_public_repositories: bool | None = None,
        repositories: Collection[str] | None = None,
    ) -> RunnerGroup:
        """Change a group's repository access, as an organization admin does (the Default
        group included); runners already registered follow the new policy at once."""
        group = next((g for g in self._groups.get(org.lower(), []) if g.id == group_id), None)
        if group is None:
            raise ValueError(f"organization {org!r} has no runner group {group_id}")
        chosen = GroupVisibility(visibility) if visibility is not None else group.visibility
        ids = group.selected_repository_ids
        if repositories is not None:
            ids = set()
            for full_name in repositories:
                repo = self._repos.get(full_name.lower())
                if repo is None or repo.owner.login.lower() != org.lower():
                    raise ValueError(f"{full_name!r} is not a repository of {org!r}")
                ids.add(repo.id)
        group.visibility, group.selected_repository_ids = chosen, ids  # all checked: now change
        if allows_public_repositories is not None:
            group.allows_public_repositories = allows_public_repositories
        self._dispatch()
        self._notify()
        return group

    # ---------------------------------------------------------------- App (JWT) endpoints

    def authenticate_app(self, jwt: str) -> None:
        """Raise GitHub's 401 unless ``jwt`` is a valid JWT of this App (§5.1)."""
        verify_app_jwt(jwt, public_key=self._public_key, issuers=self._issuers, now=self._clock())

    def issue_token(
        self, jwt: str, installation_id: int, request: Mapping[str, Any] | None = None
    ) -> InstallationToken:
        """``POST /app/installations/{id}/access_tokens`` (§5.2), optional narrowing body."""
        self.authenticate_app(jwt)
        installation = self._installations.get(installation_id)
        if installation is None:
            raise errors.not_found()
        request = request or {}
        permissions = dict(installation.permissions)
        wanted = request.get("permissions")
        if wanted is not None:
            if not isinstance(wanted, dict) or any(
                _LEVELS.get(str(level), 99) > _LEVELS.get(permissions.get(name, ""), 0)
                for name, level in wanted.items()
            ):
                raise GitHubError(
                    422, "The permissions requested are not granted to this installation."
                )
            permissions = {str(name): str(level) for name, level in wanted.items()}
        repositories = self._narrow_repositories(installation, request)
        now = self._clock()
        for key in [key for key, token in self._tokens.items() if token.expires_at <= now]:
            del self._tokens[key]
        token = InstallationToken(
            token="ghs_"
            + "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(36)),
            installation_id=installation_id,
            expires_at=now + self.token_lifetime,
            permissions=permissions,
            repositories=repositories,
        )
        self._tokens[token.token] = token
        return token

    def _narrow_repositories(
        self, installation: Installation, request: Mapping[str, Any]
    ) -> tuple[str, ...] | None:
        names = request.get("repositories")
        ids = request.get("repository_ids")
        if names is None and ids is None:
            return None
        by_name = {self._repos[n.lower()].name.lower(): n for n in installation.repositories}
        by_id = {self._repos[n.lower()].id: n for n in installation.repositories}
        chosen: list[str] = []
        for name in names or ():
            if not isinstance(name, str) or name.lower() not in by_name:
                break
            chosen.append(by_name[name.lower()])
        else:
            for repo_id in ids or ():
                if repo_id not in by_id:
                    break
                chosen.append(by_id[repo_id])
            else:
                return tuple(dict.fromkeys(chosen))
        raise GitHubError(
            422,
            "There is at least one repository that does not exist or is not accessible to the "
            "parent installation.",
        )

    def installation_for(
        self, jwt: str, *, repository: str | None = None, org: str | None = None
    ) -> dict[str, Any]:
        """``GET /repos/{o}/{r}/installation`` and ``GET /orgs/{org}/installation`` (§5.2)."""
        self.authenticate_app(jwt)
        for installation in self._installations.values():
            if repository is not None and repository.lower() in (
                name.lower() for name in installation.repositories
            ):
                return self._installation_json(installation)
            if (
                org is not None
                and installation.account.type is AccountType.ORGANIZATION
                and installation.account.login.lower() == org.lower()
            ):
                return self._installation_json(installation)
        raise errors.not_found()

    def _installation_json(self, installation: Installation) -> dict[str, Any]:
        return {
            "id": installation.id,
            "app_id": self.app_id,
            "account": account_json(installation.account),
            "target_id": installation.account.id,
            "target_type": installation.account.type.value,
            "repository_selection": "selected",
            "access_tokens_url": (
                f"{self.base_url}/app/installations/{installation.id}/access_tokens"
            ),
            "repositories_url": f"{self.base_url}/installation/repositories",
            "permissions": dict(installation.permissions),
            "events": ["workflow_job"],
        }

    # ---------------------------------------------------------------- installation-token auth

    def authorize(
        self,
        token: str,
        *,
        permission: tuple[str, str],
        repository: str | None = None,
        org: str | None = None,
        docs: str = errors.REST_DOCS,
    ) -> Installation:
        """The installation behind ``token``, if it may act with ``permission`` on the target.

        Unknown or expired token: 401 "Bad credentials" (§5.2). A repository outside the
        token's reach is invisible: 404 (private) or 403 (public). An organization not the
        installation's account: 403. A missing permission: 403 naming it.
        """
        grant = self._tokens.get(token)
        if grant is None or grant.expires_at <= self._clock():
            raise errors.bad_credentials()
        installation = self._installations[grant.installation_id]
        if repository is not None:
            repo = self._repos.get(repository.lower())
            reach = (
                grant.repositories if grant.repositories is not None else installation.repositories
            )
            if repo is None or repo.full_name not in reach:
                if repo is not None and not repo.private:
                    raise errors.not_accessible(*permission, docs)
                raise errors.not_found(docs)
        if org is not None and installation.account.login.lower() != org.lower():
            raise errors.not_accessible(*permission, docs)
        name, level = permission
        if _LEVELS.get(grant.permissions.get(name, ""), 0) < _LEVELS[level]:
            raise errors.not_accessible(name, level, docs)
        return installation

    def add_personal_token(
        self, installation_id: int, permissions: Mapping[str, str] | None = None
    ) -> str:
        """A fine-grained personal access token (§5.4) reaching the repositories of an
        installation, with its permissions unless given: a grant that never expires."""
        installation = self._installations[installation_id]
        token = InstallationToken(
            token="github_pat_" + secrets.token_hex(20),
            installation_id=installation_id,
            expires_at=math.inf,
            permissions=dict(permissions if permissions is not None else installation.permissions),
            repositories=None,
        )
        self._tokens[token.token] = token
        return token.token

    def budget_key(self, credential: str) -> str:
        """Whose rate-limit budget a request spends (§7): an installation's tokens share one,
        the App's JWTs share one, a personal token has its own."""
        grant = self._tokens.get(credential)
        if grant is not None and not credential.startswith(PERSONAL_TOKEN_PREFIXES):
            return f"installation {grant.installation_id}"
        if credential.count(".") == 2:
            return "app"
        return f"token {credential[-4:]}" if credential else "anonymous"

    def maybe_fail(self) -> None:
        """Answer 502 at the configured rate (`Faults.server_error_rate`)."""
        if self._rng.random() < self.faults.server_error_rate:
            raise GitHubError(502, "Server Error")

    # ---------------------------------------------------------------- runners (§3)

    def scope_for(self, *, repository: str | None = None, org: str | None = None) -> RunnerScope:
        """The canonical scope of a route (names as GitHub spells them)."""
        if repository is not None:
            return RunnerScope(repository=self._repos[repository.lower()].full_name)
        assert org is not None
        return RunnerScope(organization=self._accounts[org.lower()].login)

    def generate_jitconfig(
        self, scope: RunnerScope, body: object, *, docs: str = errors.REST_DOCS
    ) -> tuple[Runner, str]:
        """Register a JIT runner; return it and its ``encoded_jit_config`` (§3.2)."""
        name, group_id, labels, work_folder = _validate_jit_request(body, docs)
        if len(name) > MAX_RUNNER_NAME:
            raise GitHubError(
                422,
                "Validation Failed",
                documentation_url=docs,
                errors=[
                    {
                        "resource": "Runner",
                        "code": "custom",
                        "field": "name",
                        "message": f"name is too long (maximum is {MAX_RUNNER_NAME} characters)",
                    }
                ],
            )
        self.reap()
        group = self._group(scope, group_id)
        if group is None:
            raise errors.not_found(docs)
        if any(r.scope == scope and r.name.lower() == name.lower() for r in self._runners.values()):
            raise GitHubError(
                409,
                f"Already exists - A runner with the name {name} already exists.",
                documentation_url=docs,
            )
        unique = list(dict.fromkeys(labels))
        runner = Runner(
            id=next(self._runner_ids),
            name=name,
            scope=scope,
            labels=tuple(unique),
            label_ids=tuple(self._label_id(label) for label in unique),
            runner_group=group,
            work_folder=work_folder,
            secret=secrets.token_urlsafe(32),
            registered_at=self._clock(),
        )
        self._runners[runner.id] = runner
        target = scope.repository or scope.organization
        encoded = encode_jit_config(
            runner_id=runner.id,
            runner_name=runner.name,
            pool_id=group.id,
            pool_name=group.name,
            server_url=f"{self.base_url}/_runner",
            github_url=f"{self.base_url}/{target}",
            work_folder=work_folder,
            secret=runner.secret,
        )
        self._notify()
        return runner, encoded

    def _group(self, scope: RunnerScope, group_id: int) -> RunnerGroup | None:
        if scope.repository is not None:
            # Repository runners live in the Default group, id 1 (§3.2, [C]); another id names
            # no group at repository level.
            default = RunnerGroup(id=DEFAULT_GROUP_ID, name="Default", default=True)
            return default if group_id == DEFAULT_GROUP_ID else None
        assert scope.organization is not None
        groups = self._groups.get(scope.organization.lower(), [])
        return next((g for g in groups if g.id == group_id), None)

    def _label_id(self, label: str) -> int:
        return self._labels.setdefault(label.lower(), next(self._label_ids))

    def runner_groups(self, org: str, *, visible_to: str | None = None) -> list[RunnerGroup]:
        """An organization's groups; with ``visible_to`` (a repository name of the org), only
        those its jobs may use (``?visible_to_repository=``)."""
        groups = self._groups.get(org.lower(), [])
        if visible_to is None:
            return list(groups)
        repo = self._repos.get(f"{org}/{visible_to}".lower())
        return [g for g in groups if repo is not None and g.admits(repo)]

    def runner_group(self, org: str, group_id: int, *, docs: str = errors.REST_DOCS) -> RunnerGroup:
        group = next((g for g in self._groups.get(org.lower(), []) if g.id == group_id), None)
        if group is None:
            raise errors.not_found(docs)
        return group

    def group_repositories(self, group: RunnerGroup) -> list[Repository]:
        """The selected repositories of a ``selected`` group, in id order (none otherwise)."""
        if group.visibility is not GroupVisibility.SELECTED:
            return []
        return sorted(
            (r for r in self._repos.values() if r.id in group.selected_repository_ids),
            key=lambda repo: repo.id,
        )

    def runners(self, scope: RunnerScope, *, name: str | None = None) -> list[Runner]:
        self.reap()
        return [
            r
            for r in self._runners.values()
            if r.scope == scope and (name is None or r.name == name)
        ]

    def runner(self, scope: RunnerScope, runner_id: int, *, docs: str = errors.REST_DOCS) -> Runner:
        self.reap()
        runner = self._runners.get(runner_id)
        if runner is None or runner.scope != scope:
            raise errors.not_found(docs)
        return runner

    def is_online(self, runner: Runner) -> bool:
        """Online while a broker session is open and the runner keeps polling."""
        session = runner.session
        if session is None:
            return False
        return session.polls > 0 or self._clock() - session.last_seen <= SESSION_IDLE

    def delete_runner(
        self, scope: RunnerScope, runner_id: int, *, docs: str = errors.REST_DOCS
    ) -> None:
        """``DELETE .../actions/runners/{id}``: 204, 404 unknown, 422 when busy (§3.4)."""
        runner = self.runner(scope, runner_id, docs=docs)
        if runner.job_id is not None:
            raise GitHubError(
                422,
                f'Bad request - Runner "{runner.name}" is still running a job"',
                documentation_url=docs,
            )
        self._remove_runner(runner)

    def _remove_runner(self, runner: Runner) -> None:
        del self._runners[runner.id]
        runner.session = None
        self._notify()

    def reap(self) -> None:
        """What GitHub removes on its own clock, done whenever state is looked at (and every
        `REAP_INTERVAL` while `run` runs):

        - a JIT runner that has not taken a job ``runner_idle_timeout`` after it was registered
          (docs/github.md §3.2: JIT runners that never run a job are removed; observed after
          2-6 minutes, JIT configs valid about 5);
        - a job still waiting for approval after `APPROVAL_TIMEOUT` fails (§2.1).
        """
        now = self._clock()
        for runner in list(self._runners.values()):
            idle = runner.job_id is None and not runner.ran_job
            if idle and now - runner.registered_at >= self.runner_idle_timeout:
                self._remove_runner(runner)
        for job in list(self._waiting.values()):
            if now - job.created_at >= APPROVAL_TIMEOUT:
                self._complete_unrun(job, Conclusion.FAILURE)

    async def _reap_forever(self) -> None:
        while True:
            self.reap()
            await trio.sleep(REAP_INTERVAL)

    # ---------------------------------------------------------------- broker (runner side)

    def _runner_by_secret(self, secret: str) -> Runner:
        for runner in self._runners.values():
            if secrets.compare_digest(runner.secret, secret):
                return runner
        raise errors.OAuthError()  # never registered, or removed (deleted / job done / idle)

    def open_session(
        self, secret: str, *, os_name: str = "Linux", version: str | None = None
    ) -> Session:
        """The runner connects: online from now on. A live second session is a conflict (409),
        which the real runner reports as SessionConflict (exit code 5, docs/github.md §8.3).
        Credentials of a removed runner are ``invalid_client`` (401, `errors.OAuthError`).

        ``version`` is the session's ``agent.version`` (the real runner sends its own,
        BrokerMessageListener.cs ``CreateSessionAsync``). The session opens whatever it is (the
        broker refuses a deprecated runner at its message poll, `wait_message`), but a runner
        is given jobs only once its version is known to meet the floor: GitHub never assigns a
        job to a runner it then refuses as deprecated."""
        self.reap()
        runner = self._runner_by_secret(secret)
        if self.is_online(runner):
            raise GitHubError(409, "A session for this runner already exists.")
        runner.session = Session(
            id=secrets.token_hex(16),
            last_seen=self._clock(),
            version_ok=self.min_runner_version is None
            or (version is not None and not self._deprecated(version)),
        )
        runner.os = os_name
        self._dispatch()
        self._notify()
        return runner.session

    def close_session(self, secret: str, session_id: str) -> None:
        runner = self._runner_by_secret(secret)
        if runner.session is not None and runner.session.id == session_id:
            runner.session = None
            self._notify()

    async def wait_message(
        self, secret: str, session_id: str, *, version: str | None = None
    ) -> Job:
        """Long-poll: the job assigned to this runner, once there is one (the caller times out).

        The same job is returned again until its result is reported, so a poll whose answer is
        lost does not lose the job. ``version`` is the poll's ``runnerVersion``; below
        ``min_runner_version`` the poll is refused as deprecated (403 RunnerVersionTooOld, the
        runner's exit code 7, docs/github.md §8.3). A runner removed while it polls gets
        RunnerNotFound; a closed or replaced session RunnerSessionInvalid.
        """
        self.reap()
        runner = self._runner_by_secret(secret)
        session = runner.session
        if session is None or session.id != session_id:
            raise errors.session_invalid()
        if self.min_runner_version is not None:
            session.version_ok = not self._deprecated(version)
            if not session.version_ok:
                self._notify()
                raise errors.version_too_old(version or "")
        session.polls += 1
        session.last_seen = self._clock()
        try:
            self._dispatch()
            while runner.job_id is None:
                await self._changed.wait()
                if runner.id not in self._runners:
                    raise errors.runner_not_found()
                if runner.session is not session:
                    raise errors.session_invalid()
            return self._jobs[runner.job_id]
        finally:
            session.polls -= 1
            session.last_seen = self._clock()

    def _deprecated(self, version: str | None) -> bool:
        """Below ``min_runner_version`` (never without one)."""
        if self.min_runner_version is None:
            return False
        try:
            return parse_runner_version(version or "") < self.min_runner_version
        except ValueError:
            return True  # no version, or not one: it cannot be shown new enough

    def report_result(self, secret: str, job_id: int, exit_code: int, log: bytes) -> Job:
        """The runner finished: the job completes, and the JIT runner is removed (§3.2)."""
        runner = self._runner_by_secret(secret)
        if runner.job_id != job_id:
            raise errors.not_found()
        job = self._jobs[job_id]
        job.status = JobStatus.COMPLETED
        job.conclusion = Conclusion.SUCCESS if exit_code == 0 else Conclusion.FAILURE
        job.completed_at = self._clock()
        job.exit_code = exit_code
        job.log = log
        runner.job_id = None
        self._emit(job, "completed")
        self.actions.job_completed(job, runner)
        self._remove_runner(runner)
        return job

    def _dispatch(self) -> None:
        """Give queued jobs, oldest first, to connected idle runners that match (§2.1)."""
        for job in list(self._queued.values()):
            runner = next((r for r in self._runners.values() if self._can_take(r, job)), None)
            if runner is not None:
                self._assign(job, runner)

    def dispatch(self) -> None:
        """Give queued jobs to runners now (`ActionsService` after assigning a job)."""
        self._dispatch()

    def queued_jobs(self) -> list[Job]:
        """Jobs no runner has taken yet, oldest first."""
        return list(self._queued.values())

    def _can_take(self, runner: Runner, job: Job) -> bool:
        """Idle, online, labels a superset, scope covering the repository and, for an
        organization runner, its group admitting the repository; for a job whose runs-on names
        a group, a runner of that group (else the job stays queued, as on GitHub)."""
        if runner.job_id is not None or runner.ran_job or not self.is_online(runner):
            return False
        if runner.session is None or not runner.session.version_ok:
            return False  # not yet shown to meet the version floor (`open_session`)
        if runner.scope.organization is not None and not runner.runner_group.admits(job.repository):
            return False
        if job.runs_on_group is not None and (
            runner.scope.organization is None
            or runner.runner_group.name.lower() != job.runs_on_group.lower()
        ):
            return False  # runs-on names a group: its runners only (repository ones are in none)
        if not self.actions.may_take(runner, job):
            return False
        have = {label.lower() for label in runner.labels}
        return runner.scope.covers(job.repository) and all(
            label.lower() in have for label in job.labels
        )

    def _assign(self, job: Job, runner: Runner) -> None:
        del self._queued[job.id]
        job.status = JobStatus.IN_PROGRESS
        job.started_at = self._clock()
        job.runner_id, job.runner_name = runner.id, runner.name
        job.runner_group_id = runner.runner_group.id
        job.runner_group_name = runner.runner_group.name
        runner.job_id = job.id
        runner.ran_job = True
        self._emit(job, "in_progress")
        self.actions.job_started(job, runner)
        self._notify()

    # ---------------------------------------------------------------- jobs (control side)

    def add_environment(
        self, repository: str, name: str, *, required_reviewers: bool = False
    ) -> Environment:
        """Configure a deployment environment (repository settings on GitHub). A job naming an
        environment that does not exist creates it unprotected, as GitHub does."""
        repo = self._repos.get(repository.lower())
        if repo is None:
            raise GitHubError(404, f"Repository {repository!r} is not in any installation")
        key = (repo.full_name.lower(), name.lower())
        environment = self._environments.get(key)
        if environment is None:
            environment = Environment(id=next(self._environment_ids), repository=repo, name=name)
            self._environments[key] = environment
        environment.required_reviewers = required_reviewers
        return environment

    def create_job(
        self,
        repository: str,
        labels: Sequence[str],
        script: str,
        *,
        name: str = "build",
        workflow_name: str = "CI",
        head_branch: str = "main",
        installation: int | None = None,
        environment: str | None = None,
        run_id: int | None = None,
        container: str | None = None,
        group: str | None = None,
    ) -> Job:
        """A workflow job is created (as a push would make it) and announced with ``queued``.

        ``group`` is runs-on's runner group (``runs-on: {group: X, labels: [...]}``): only
        runners of the organization runner group of that name take the job; ``labels`` may then
        be empty (``runs-on: {group: X}``). The payload carries the labels only (`Job`).

        With ``environment`` the job gets a deployment; if that environment has required
        reviewers the job waits (`JobStatus.WAITING`: ``queued`` with status ``waiting``, then
        ``waiting``) until `review_job` approves it. ``run_id`` adds the job to an existing run
        of the repository (its latest attempt); otherwise the job starts a run of its own.
        ``container`` is the workflow's ``container:`` image (``jobs.<id>.container``).
        """
        repo = self._repos.get(repository.lower())
        if repo is None:
            raise GitHubError(404, f"Repository {repository!r} is not in any installation")
        covering = [i.id for i in self._installations.values() if repo.full_name in i.repositories]
        if installation is None:
            installation = covering[0]
        elif installation not in covering:
            raise GitHubError(422, f"Installation {installation} does not cover {repo.full_name}")
        if not all(isinstance(label, str) and label for label in labels):
            raise GitHubError(422, "Labels (runs-on) must be non-empty strings")
        if not labels and not group:
            raise GitHubError(422, "A job needs at least one label or a runner group (runs-on)")
        attempt, head_sha = 1, secrets.token_hex(20)
        if run_id is not None:
            run = [j for j in self.jobs_of(repo.full_name) if j.run_id == run_id]
            if not run:
                raise GitHubError(404, f"{repo.full_name} has no workflow run {run_id}")
            attempt, head_sha = max(j.run_attempt for j in run), run[0].head_sha
        job = Job(
            id=next(self._job_ids),
            run_id=run_id if run_id is not None else next(self._run_ids),
            run_attempt=attempt,
            repository=repo,
            installation_id=installation,
            labels=tuple(labels),
            script=script,
            name=name,
            workflow_name=workflow_name,
            head_branch=head_branch,
            head_sha=head_sha,
            created_at=self._clock(),
            container=container,
            runs_on_group=group or None,
        )
        if environment is not None:
            self._deploy(job, environment)
        self._start(job)
        return job

    def _deploy(self, job: Job, environment: str) -> None:
        known = self._environments.get((job.repository.full_name.lower(), environment.lower()))
        if known is None:
            known = self.add_environment(job.repository.full_name, environment)
        now = self._clock()
        job.deployment = Deployment(
            id=next(self._deployment_ids), environment=known, created_at=now, updated_at=now
        )

    def _start(self, job: Job) -> None:
        """Announce a new job (attempt): queued and dispatched, or waiting for its reviewers.

        The waiting sequence is GitHub's (octokit payload-examples workflow_job/
        queued.with-deployment and waiting, one job id): ``queued`` carrying status
        ``waiting`` and the deployment, then ``waiting``.
        """
        self._jobs[job.id] = job
        deployment = job.deployment
        if deployment is not None and deployment.environment.required_reviewers:
            job.status = JobStatus.WAITING
            self._waiting[job.id] = job
            self._emit(job, "queued")
            self._emit(job, "waiting")
            self._notify()
            return
        self._queued[job.id] = job
        self._emit(job, "queued")
        self.actions.job_queued(job)
        self._dispatch()
        self._notify()

    def review_job(self, job_id: int, *, approve: bool) -> Job:
        """A reviewer approves or rejects the deployment of a waiting job.

        Approved: ``queued`` again, now with status ``queued`` and the same job id, and only
        then can a runner take it. Rejected: ``completed`` with conclusion ``failure`` ("If a
        job is rejected, the workflow will fail", GitHub docs, Reviewing deployments).
        """
        job = self.job(job_id)
        if job.status is not JobStatus.WAITING:
            raise GitHubError(422, f"Job {job_id} is {job.status.value}, not waiting for a review")
        assert job.deployment is not None
        job.deployment.updated_at = self._clock()
        del self._waiting[job.id]
        if not approve:
            self._complete_unrun(job, Conclusion.FAILURE)
            return job
        job.status = JobStatus.QUEUED
        self._queued[job.id] = job
        self._emit(job, "queued")
        self.actions.job_queued(job)
        self._dispatch()
        self._notify()
        return job

    def job(
        self, job_id: int, *, repository: str | None = None, docs: str = errors.REST_DOCS
    ) -> Job:
        """A job by id; with ``repository``, only if it belongs to it (else 404 like GitHub)."""
        job = self._jobs.get(job_id)
        if job is None or (
            repository is not None and job.repository.full_name.lower() != repository.lower()
        ):
            raise errors.not_found(docs)
        return job

    def cancel_job(self, job_id: int) -> Job:
        """Cancel a queued or waiting job: it completes ``cancelled`` with no runner (§2.1)."""
        job = self.job(job_id)
        if job.status not in (JobStatus.QUEUED, JobStatus.WAITING):
            raise GitHubError(409, f"Cannot cancel a job that is {job.status.value}.")
        self._complete_unrun(job, Conclusion.CANCELLED)
        return job

    def _complete_unrun(self, job: Job, conclusion: Conclusion) -> None:
        self._queued.pop(job.id, None)
        self._waiting.pop(job.id, None)
        job.status = JobStatus.COMPLETED
        job.conclusion = conclusion
        job.completed_at = self._clock()
        self._emit(job, "completed")
        self.actions.job_cancelled(job)
        self._notify()

    def latest_jobs(self, jobs: Sequence[Job]) -> list[Job]:
        """Of one run's jobs, the latest attempt of each (``filter=latest``, §4), in order."""
        latest: dict[str, Job] = {}
        for job in jobs:
            if job.name not in latest or job.run_attempt > latest[job.name].run_attempt:
                latest[job.name] = job
        return sorted(latest.values(), key=lambda j: j.id)

    def rerun_job(self, job_id: int) -> Job:
        """Re-run one job of a completed run: a new attempt of the run with a new job id
        (``run_attempt`` one more), announced like a new job (``queued``, or waiting for its
        environment's reviewers again). While any job of the run is unfinished GitHub refuses
        with 403 "The workflow run containing this job is already running"."""
        job = self.job(job_id)
        run = [j for j in self.jobs_of(job.repository.full_name) if j.run_id == job.run_id]
        if any(j.status is not JobStatus.COMPLETED for j in run):
            raise GitHubError(
                403,
                "The workflow run containing this job is already running",
                documentation_url=RERUN_JOB_DOCS,
            )
        return self._rerun([job], attempt=max(j.run_attempt for j in run) + 1)[0]

    def rerun_run(self, repository: str, run_id: int, *, failed_only: bool = False) -> list[Job]:
        """Re-run a completed run (or its failed and cancelled jobs): the latest attempt's jobs
        again under new ids and the next ``run_attempt``."""
        run = [j for j in self.jobs_of(repository) if j.run_id == run_id]
        if not run:
            raise errors.not_found(RERUN_RUN_DOCS)
        if any(j.status is not JobStatus.COMPLETED for j in run):
            # Observed wording for a run is not quoted anywhere we could check [U]; the job
            # endpoint's is (see rerun_job).
            raise GitHubError(
                403, "This workflow run is already running", documentation_url=RERUN_RUN_DOCS
            )
        chosen = [
            j
            for j in self.latest_jobs(run)
            if not failed_only or j.conclusion in (Conclusion.FAILURE, Conclusion.CANCELLED)
        ]
        if not chosen:
            raise GitHubError(
                403,
                "This workflow run has no failed jobs to re-run",
                documentation_url=RERUN_RUN_DOCS,
            )
        return self._rerun(chosen, attempt=max(j.run_attempt for j in run) + 1)

    def _rerun(self, jobs: Sequence[Job], *, attempt: int) -> list[Job]:
        again = []
        for old in jobs:
            job = Job(
                id=next(self._job_ids),
                run_id=old.run_id,
                run_attempt=attempt,
                repository=old.repository,
                installation_id=old.installation_id,
                labels=old.labels,
                script=old.script,
                container=old.container,
                name=old.name,
                workflow_name=old.workflow_name,
                head_branch=old.head_branch,
                head_sha=old.head_sha,
                created_at=self._clock(),
                runs_on_group=old.runs_on_group,
            )
            if old.deployment is not None:
                self._deploy(job, old.deployment.environment.name)
            self._start(job)
            again.append(job)
        return again

    # ---------------------------------------------------------------- waiting

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def _wait_until(self, condition: Callable[[], bool]) -> None:
        while not condition():
            await self._changed.wait()

    async def wait_until(self, condition: Callable[[], bool]) -> None:
        """Wait until ``condition()`` holds, re-checked at every change of the stand-in's
        state (a test's own condition on runners or jobs); the caller bounds the wait."""
        await self._wait_until(condition)

    async def wait_job(self, job_id: int, status: JobStatus | str) -> Job:
        """Wait until the job has ``status``; the caller bounds the wait (``fail_after``)."""
        job = self.job(job_id)
        await self._wait_until(lambda: job.status == status)
        return job

    async def wait_runner(self, runner_id: int, *, online: bool = True) -> None:
        """Wait until the runner is online (or, with ``online=False``, offline or removed)."""

        def reached() -> bool:
            runner = self._runners.get(runner_id)
            return (runner is not None and self.is_online(runner)) == online

        await self._wait_until(reached)

    def jobs_of_run(self, run_id: int) -> list[Job]:
        """Every job (of every attempt) of a workflow run, oldest first."""
        return [j for j in self._jobs.values() if j.run_id == run_id]

    def jobs_of(self, repository: str) -> list[Job]:
        """Every job of a repository, oldest first (the runs API groups them, `runs`)."""
        key = repository.lower()
        return [j for j in self._jobs.values() if j.repository.full_name.lower() == key]

    def app_deliveries(self) -> list[Delivery]:
        """Attempts to the App's own hook, oldest first (``GET /app/hook/deliveries``, §1.4)."""
        app_hooks = {h.id for h in self._hooks if h.target_type == "integration"}
        return [d for d in self.deliveries if d.outgoing.hook_id in app_hooks]

    def redeliver(self, delivery: Delivery) -> None:
        """Send a delivery's bytes again with its GUID, marked as a redelivery (§1.4)."""
        hook = next(h for h in self._hooks if h.id == delivery.outgoing.hook_id)
        hook.outbox_send.send_nowait(dataclasses.replace(delivery.outgoing, redelivery=True))

    async def wait_deliveries(self, count: int) -> list[Delivery]:
        """Wait until ``count`` delivery attempts have finished; return all attempts so far."""
        await self._wait_until(lambda: sum(d.status != "pending" for d in self.deliveries) >= count)
        return list(self.deliveries)

    # ---------------------------------------------------------------- webhooks

    def add_hook(
        self,
        url: str,
        secret: str | bytes,
        *,
        content_type: str = "json",
        repository: str | None = None,
        org: str | None = None,
        backends: Sequence[str] = (),
    ) -> Hook:
        """Register a webhook (the App's, or with ``repository``/``org`` one of those) and send
        it a ``ping`` (§1.5). ``backends``: ``url`` is a load balancer in front of these, and
        each delivery goes to one of them chosen at random (``Sender._post``)."""
        for where in (url, *backends):
            if not where.startswith(("http://", "https://")):
                raise ValueError(f"webhook URL must be http(s), got {where!r}")
        if content_type not in ("json", "form"):
            raise ValueError(f"content_type must be 'json' or 'form', got {content_type!r}")
        repo = self._repos[repository.lower()] if repository is not None else None
        if repo is not None:
            target: tuple[str, int, str | None] = ("repository", repo.id, repo.full_name)
        elif org is not None:
            account = self._accounts[org.lower()]
            target = ("organization", account.id, account.login)
        else:
            target = ("integration", self.app_id, None)
        send, receive = trio.open_memory_channel[Outgoing](math.inf)
        hook = Hook(
            id=next(self._hook_ids),
            url=url,
            secret=secret.encode() if isinstance(secret, str) else secret,
            content_type=content_type,
            target_type=target[0],
            target_id=target[1],
            target_name=target[2],
            outbox_send=send,
            outbox_receive=receive,
            backends=tuple(backends),
        )
        self._hooks.append(hook)
        payload: dict[str, Any] = {
            "zen": ZEN,
            "hook_id": hook.id,
            "hook": hook.hook_json(self.app_id),
        }
        if repo is not None:
            payload["repository"] = repository_json(repo, self.base_url)
        payload["sender"] = account_json(SENDER)
        self._enqueue(hook, "ping", payload, job=None)
        if self._nursery is not None and self._sender is not None:
            self._nursery.start_soon(self._sender.run_hook, hook)
        return hook

    def _covers(self, hook: Hook, job: Job) -> bool:
        if hook.target_type == "integration":
            return True
        if hook.target_type == "repository":
            return hook.target_name == job.repository.full_name
        return hook.target_name == job.repository.owner.login

    def _emit(self, job: Job, action: str) -> None:
        """Queue a ``workflow_job`` event with the job as it is now, for every covering hook.

        One event has one ``X-GitHub-Delivery`` GUID for all its hooks (repository,
        organization, App): the GUID is "shared with all deliveries for all webhooks that
        subscribe to this event" (§1.4). A job with a deployment carries it, except in
        ``waiting``, as in octokit's examples (queued.with-deployment has it, waiting not).
        """
        guid = new_guid()
        deployment = deployment_json(job, account_json(SENDER), self.base_url)
        for hook in self._hooks:
            if not self._covers(hook, job):
                continue
            payload: dict[str, Any] = {
                "action": action,
                "workflow_job": job_json(job, self.base_url),
            }
            if deployment is not None and action != "waiting":
                payload["deployment"] = deployment
            payload["repository"] = repository_json(job.repository, self.base_url)
            payload["sender"] = account_json(SENDER)
            owner = job.repository.owner
            if owner.type is AccountType.ORGANIZATION:
                payload["organization"] = {
                    "login": owner.login,
                    "id": owner.id,
                    "node_id": account_json(owner)["node_id"],
                }
            if hook.target_type == "integration":
                payload["installation"] = {
                    "id": job.installation_id,
                    "node_id": base64.b64encode(
                        f"Installation{job.installation_id}".encode()
                    ).decode(),
                }
            self._enqueue(hook, "workflow_job", payload, job=job, guid=guid)

    def _enqueue(
        self,
        hook: Hook,
        event: str,
        payload: dict[str, Any],
        *,
        job: Job | None,
        guid: str | None = None,
    ) -> None:
        body = encode_body(hook, payload)
        guid = guid or new_guid()
        installation = payload.get("installation")
        hook.outbox_send.send_nowait(
            Outgoing(
                guid=guid,
                hook_id=hook.id,
                event=event,
                action=payload.get("action"),
                installation_id=installation["id"] if installation else None,
                repository_id=job.repository.id if job else None,
                job_id=job.id if job else None,
                body=body,
                headers=delivery_headers(hook, event, guid, body),
            )
        )

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Send webhook deliveries and make `reap` passes until cancelled. Deliveries queued
        before start wait for it."""
        if self._nursery is not None:
            raise RuntimeError("this Emulator is already running")
        async with httpx.AsyncClient(trust_env=False) as client, trio.open_nursery() as nursery:
            self._sender = Sender(
                client,
                self.deliveries,
                faults=lambda: self.faults,
                rng=self._rng,
                on_recorded=self._notify,
            )
            self._nursery = nursery
            try:
                for hook in self._hooks:
                    nursery.start_soon(self._sender.run_hook, hook)
                nursery.start_soon(self._reap_forever)
                task_status.started()
                await trio.sleep_forever()
            finally:
                self._nursery = None
                self._sender = None


def _validate_jit_request(body: object, docs: str) -> tuple[str, int, list[str], str]:
    """GitHub's JSON-schema check of the generate-jitconfig body (§3.2), its 422 messages."""
    if not isinstance(body, dict):
        raise errors.invalid_request(f"{_show(body)} is not an object.", docs)
    for key in ("name", "runner_group_id", "labels"):
        if key not in body:
            raise errors.invalid_request(f'"{key}" wasn\'t supplied.', docs)
    name, group_id, labels = body["name"], body["runner_group_id"], body["labels"]
    work_folder = body.get("work_folder", "_work")
    if not isinstance(name, str):
        raise errors.invalid_request(f"For 'properties/name', {_show(name)} is not a string.", docs)
    if not isinstance(group_id, int) or isinstance(group_id, bool):
        raise errors.invalid_request(
            f"For 'properties/runner_group_id', {_show(group_id)} is not an integer.", docs
        )
    if not isinstance(labels, list):
        raise errors.invalid_request(
            f"For 'properties/labels', {_show(labels)} is not an array.", docs
        )
    if not 1 <= len(labels) <= MAX_LABELS:
        bound = (
            "fewer items than the minimum of 1"
            if not labels
            else f"more items than the maximum of {MAX_LABELS}"
        )
        raise errors.invalid_request(f"For 'properties/labels', {_show(labels)} has {bound}.", docs)
    for label in labels:
        if not isinstance(label, str):
            raise errors.invalid_request(f"For 'items', {_show(label)} is not a string.", docs)
    if not isinstance(work_folder, str):
        raise errors.invalid_request(
            f"For 'properties/work_folder', {_show(work_folder)} is not a string.", docs
        )
    return name, group_id, labels, work_folder


def _show(value: object) -> str:
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."
