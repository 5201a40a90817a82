"""The reconciler: periodic repair of what webhooks alone cannot guarantee.

GitHub never retries a failed delivery (docs/github.md §1.3), so a job whose ``queued`` webhook was
lost (gantryd down, network, a 503) would wait 24 h and fail. Every ``reconcile_interval`` one
pass, ``reconcile_once``, does three idempotent things:

- ``sweep_queued_jobs``: for the configured repositories, those seen in webhooks and those of
  the configured organizations, list runs with status ``queued``, ``in_progress`` (a run is
  in progress while some jobs still queue, §4) and ``waiting`` (jobs behind an environment
  approval, which are enqueued held), list their jobs, and enqueue the queued ones that
  match a pool. The queue's unique job key makes known jobs no-ops, so a sweep never doubles a
  job. There is no organization-wide list of queued jobs (§4), so an organization's repositories
  are listed first: with an App, ``GET /installation/repositories`` as the installation on that
  organization (``GET /orgs/{org}/installation``); with a token, ``GET /orgs/{org}/repos``.
  Archived repositories are skipped (they run no workflows), and a repository is swept once per
  pass however many ways it is known.
- ``redeliver_failed`` (GitHub App only): list the App's deliveries back to the redelivery window
  and ask GitHub to redeliver each ``workflow_job`` GUID that has no OK attempt (as GitHub's own
  example script does). Redeliveries reuse the GUID, so intake dedupes them.
- prune finished queue entries and delivery ids older than ``queue.retention`` (kept at least
  as long as the redelivery window, so a redelivery is still recognised), and the per-job usage
  rows of this host's runner store with the same retention (the reporter has long used them).

GitHub calls stop for the pass once the remaining quota would drop below ``(1 -
reconcile_rate_share)`` of the limit (`RateBudget`): provisioning runners matters more.

With several hosts on one Redis (``agent.fleet``) only the holder of the reconciler lease
(``leader``) sweeps, redelivers and prunes the shared queue; every host still prunes its own
runner store's usage rows.
"""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import trio

from agent.container.store import RunnerStore
from agent.github import actions
from agent.github.client import GitHubClient, GitHubError, RunnerTarget
from agent.orchestrator.job_parser import PayloadError, job_spec, parse_rest_job
from agent.queue.base import EnqueueOutcome, JobQueue, QueueError
from agent.reload import LiveConfig

log = logging.getLogger(__name__)

REDELIVERY_WINDOW = 3 * 86400.0  # github.com keeps deliveries 3 days (GHES 7; it lists fewer)
MAX_REDELIVERIES = 3  # per GUID and process: a delivery intake keeps refusing is left alone
MAX_SEEN = 1000  # repositories remembered from webhooks, least recently seen dropped first
SWEPT_STATUSES = ("queued", "in_progress", "waiting")  # waiting: behind an approval


class RateBudget:
    """Keeps the reconciler within its share of each rate limit it draws on.

    Keyed by whose quota a call spends (an installation, the App's JWT, the token): a call is
    allowed unless the last answer for that key showed the remaining quota at or below the
    reserve, ``(1 - share) * limit``. Answers without rate-limit headers (GHES) never stop it.
    """

    def __init__(self, share: float) -> None:
        self.share = share
        self._last: dict[str, actions.RateLimit] = {}
        self.spent = 0

    def allows(self, key: str) -> bool:
        rate = self._last.get(key)
        if rate is None or rate.limit is None or rate.remaining is None:
            return True
        return rate.remaining > rate.limit * (1 - self.share)

    def spend(self, key: str, rate: actions.RateLimit) -> None:
        self.spent += 1
        self._last[key] = rate


class _OutOfBudget(Exception):
    pass


@dataclass
class SeenRepositories:
    """Repositories intake served jobs for, with their App installation (swept too)."""

    _seen: collections.OrderedDict[str, int | None] = field(default_factory=collections.OrderedDict)

    def add(self, repository: str, installation_id: int | None) -> None:
        self._seen[repository] = installation_id
        self._seen.move_to_end(repository)
        while len(self._seen) > MAX_SEEN:
            self._seen.popitem(last=False)

    def snapshot(self) -> dict[str, int | None]:
        return dict(self._seen)


@dataclass(frozen=True, kw_only=True)
class PassReport:
    enqueued: int = 0
    redelivered: int = 0
    pruned: int = 0
    pruned_usage: int = 0  # job_usage rows of the runner store
    requests: int = 0
    stopped_by_budget: bool = False


class Reconciler:
    """The reconcile loop (``run``) and its pass (``reconcile_once``); see the module docstring.

    Without ``github`` only pruning runs (tests of the queue alone, a daemon without GitHub);
    without ``runner_store`` the usage rows are not pruned.
    """

    def __init__(
        self,
        *,
        live: LiveConfig,
        queue: JobQueue,
        github: GitHubClient | None = None,
        seen: SeenRepositories | None = None,
        runner_store: RunnerStore | None = None,
        clock: Callable[[], float] = time.time,
        leader: Callable[[], bool] | None = None,
    ) -> None:
        self._live = live
        self._leader = leader
        self._queue = queue
        self._runner_store = runner_store
        self._github = github
        self.seen = seen or SeenRepositories()
        self._clock = clock
        self._redelivered: collections.Counter[str] = collections.Counter()
        self.recovered = 0  # jobs the sweeps enqueued, counted as they go (a pass may stop)
        self.redelivery_requests = 0
        self._budget = RateBudget(live.current.scheduler.reconcile_rate_share)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run a pass every ``reconcile_interval`` until cancelled; errors wait for the next."""
        task_status.started()
        while True:
            try:
                await self.reconcile_once()
            except (QueueError, GitHubError) as exc:
                log.error("reconciler: %s; retrying next interval", exc)
            await trio.sleep(self._live.current.scheduler.reconcile_interval)

    async def reconcile_once(self) -> PassReport:
        self._budget = RateBudget(self._live.current.scheduler.reconcile_rate_share)
        recovered, redelivered = self.recovered, self.redelivery_requests
        stopped = False
        fleet_chores = self._leader is None or self._leader()
        try:
            if self._github is not None and fleet_chores:
                await self.sweep_queued_jobs()
                if self._github.is_app:
                    await self.redeliver_failed()
        except _OutOfBudget:
            stopped = True
            log.warning(
                "reconciler: stopped this pass after %d GitHub requests to stay within "
                "scheduler.reconcile_rate_share (%g) of the rate limit",
                self._budget.spent,
                self._budget.share,
            )
        cutoff = self._clock() - self._live.current.queue.retention
        pruned = await self._queue.prune(older_than=cutoff) if fleet_chores else 0
        if pruned:
            log.info("reconciler: pruned %d finished entries", pruned)
        pruned_usage = 0
        if self._runner_store is not None:
            pruned_usage = await self._runner_store.prune_usage(older_than=cutoff)
            if pruned_usage:
                log.info("reconciler: pruned %d job usage records", pruned_usage)
        return PassReport(
            enqueued=self.recovered - recovered,
            redelivered=self.redelivery_requests - redelivered,
            pruned=pruned,
            pruned_usage=pruned_usage,
            requests=self._budget.spent,
            stopped_by_budget=stopped,
        )

    # -- sweep ------------------------------------------------------------------------------

    def _targets(self) -> dict[str, int | None]:
        targets: dict[str, int | None] = dict.fromkeys(self._live.current.github.repositories)
        for repository, installation_id in self.seen.snapshot().items():
            if targets.get(repository) is None:
                targets[repository] = installation_id
        return targets

    def _check(self, key: str) -> None:
        if not self._budget.allows(key):
            raise _OutOfBudget

    async def sweep_queued_jobs(self) -> int:
        """Enqueue queued jobs GitHub has and gantryd does not; return how many were new."""
        assert self._github is not None
        before = self.recovered
        swept: set[str] = set()
        for repository, known_installation in self._targets().items():
            installation_id = known_installation
            if self._github.is_app and installation_id is None:
                self._check("app")
                installation_id = await self._github.installation_id(
                    RunnerTarget(repository=repository)
                )
            await self._sweep_once(repository, installation_id, swept)
        for org in self._live.current.github.organizations:
            try:
                await self._sweep_organization(org, swept)
            except GitHubError as exc:
                log.warning("reconciler: listing the repositories of %s failed: %s", org, exc)
        return self.recovered - before

    async def _sweep_once(
        self, repository: str, installation_id: int | None, swept: set[str]
    ) -> None:
        if repository.lower() in swept:
            return
        swept.add(repository.lower())
        try:
            await self._sweep_repository(repository, installation_id)
        except GitHubError as exc:
            log.warning("reconciler: sweeping %s failed: %s", repository, exc)

    async def _sweep_organization(self, org: str, swept: set[str]) -> None:
        """Sweep each repository of ``org`` not swept yet, page by page of the listing."""
        assert self._github is not None
        installation_id: int | None = None
        key = "token"
        if self._github.is_app:
            self._check("app")
            installation_id = await self._github.installation_id(RunnerTarget(organization=org))
            key = f"installation:{installation_id}"
        page: Mapping[str, str] | None = None
        while True:
            self._check(key)
            if installation_id is not None:
                repos = await actions.list_installation_repositories(
                    self._github, installation_id=installation_id, page=page
                )
            else:
                repos = await actions.list_org_repositories(self._github, org, page=page)
            self._budget.spend(key, repos.rate)
            for repo in repos.items:
                name = repo.get("full_name")
                if isinstance(name, str) and "/" in name and not repo.get("archived", False):
                    await self._sweep_once(name, installation_id, swept)
            if repos.next is None:
                return
            page = repos.next

    async def _sweep_repository(self, repository: str, installation_id: int | None) -> None:
        assert self._github is not None
        key = f"installation:{installation_id}" if installation_id else "token"
        run_ids: dict[int, None] = {}
        for status in SWEPT_STATUSES:
            page: Mapping[str, str] | None = None
            while True:
                self._check(key)
                runs = await actions.list_runs(
                    self._github,
                    repository,
                    status=status,
                    installation_id=installation_id,
                    page=page,
                )
                self._budget.spend(key, runs.rate)
                run_ids.update((int(r["id"]), None) for r in runs.items if "id" in r)
                if runs.next is None:
                    break
                page = runs.next
        for run_id in run_ids:
            page = None
            while True:
                self._check(key)
                jobs = await actions.list_run_jobs(
                    self._github, repository, run_id, installation_id=installation_id, page=page
                )
                self._budget.spend(key, jobs.rate)
                for job in jobs.items:
                    if job.get("status") in ("queued", "waiting"):  # waiting: held
                        await self._enqueue_found(job, repository, installation_id)
                if jobs.next is None:
                    break
                page = jobs.next

    async def _enqueue_found(
        self, job: Mapping[str, object], repository: str, installation_id: int | None
    ) -> None:
        try:
            event = parse_rest_job(job, repository=repository, installation_id=installation_id)
        except PayloadError as exc:
            log.warning("reconciler: skipping a job of %s: %s", repository, exc)
            return
        spec = job_spec(event, self._live.current)
        if spec is None:
            return
        # A job waiting for its environment's reviewers is held, as its webhook would have it;
        # a held job found queued was approved while that delivery was lost.
        outcome = await self._queue.enqueue(spec, held=not event.ready)
        if outcome is not EnqueueOutcome.CREATED:
            return
        self.recovered += 1
        log.info(
            "reconciler: recovered job=%s repository=%s pool=%s%s (its webhook never arrived)",
            spec.job_id,
            repository,
            spec.pool,
            "" if event.ready else ", held for approval",
        )

    # -- redelivery -------------------------------------------------------------------------

    async def redeliver_failed(self) -> int:
        """Ask GitHub to redeliver failed ``workflow_job`` deliveries still in the window."""
        assert self._github is not None
        since = self._clock() - min(REDELIVERY_WINDOW, self._live.current.queue.retention)
        ok: set[str] = set()
        failed: dict[str, int] = {}  # guid -> the newest failed attempt's id
        page: Mapping[str, str] | None = None
        while True:
            self._check("app")
            deliveries, listing = await actions.list_app_deliveries(self._github, page=page)
            self._budget.spend("app", listing.rate)
            for delivery in deliveries:
                if delivery.delivered_at < since:
                    continue
                if delivery.ok:
                    ok.add(delivery.guid)
                elif delivery.event == "workflow_job":
                    failed.setdefault(delivery.guid, delivery.id)
            oldest = min((d.delivered_at for d in deliveries), default=since - 1)
            if listing.next is None or oldest < since:
                break
            page = listing.next
        before = self.redelivery_requests
        for guid, delivery_id in failed.items():
            if guid in ok or self._redelivered[guid] >= MAX_REDELIVERIES:
                continue
            self._check("app")
            rate = await actions.redeliver(self._github, delivery_id)
            self._budget.spend("app", rate)
            self._redelivered[guid] += 1
            self.redelivery_requests += 1
            log.info("reconciler: asked GitHub to redeliver delivery %s (%s)", delivery_id, guid)
        return self.redelivery_requests - before
