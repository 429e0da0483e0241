"""The delivery worker: sends what the outbox holds, signs it, retries it, and gives up after a day.

It runs inside `invigilator serve` (one per process; many cooperate through FOR UPDATE SKIP
LOCKED) until its `stop` event is set:

    stop = asyncio.Event()
    await DeliveryWorker.from_settings(pool, settings).run(stop)

- At least once: a delivery is leased before its POST and marked delivered only after a 2xx,
  so a crash or a restart at any point means it is sent again, with the same `id`.
- Backoff: `base * 2**(attempt-1)`, capped at `backoff_max`, with jitter (half fixed, half
  random); the delivery is given up (status `failed`) once the next try would fall more than
  `max_age` (24 h) after the event.
- Order: per endpoint and session, a delivery is not attempted while an earlier one is pending
  (sql/webhooks.sql, claim_due): a receiver sees a session's events in the order they happened,
  and one failing event holds back the later ones of that session only.
- Stops between deliveries: once `stop` is set no new delivery is claimed; the POSTs in flight
  (each bounded by the timeout) finish and are recorded first.
- Never in a candidate's way: it runs in its own task, holds no database connection during a
  POST, and every transaction it makes is short.
- session.silent: every `silent_scan_interval` it looks for active sessions with no heartbeat
  for half the abandon threshold and enqueues one event per silence.
- 410 Gone: the receiver wants no more; the endpoint is turned off (Standard Webhooks).
- Signed anew for each attempt (webhook-timestamp is the attempt's), so a retry hours later
  still passes the receiver's five-minute tolerance.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import secrets
import ssl
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from psycopg_pool import AsyncConnectionPool
from pydantic import SecretStr

from invigilator import __version__, metrics
from invigilator.config import Settings
from invigilator.domain import DatabaseUnavailable, InvigilatorError, Policy
from invigilator.views import SessionOut, SessionWithAnswers, from_columns, with_clock
from invigilator.webhooks import sign
from invigilator.webhooks.outbox import Claimed, WebhookStore
from invigilator.webhooks.vault import SecretBox

log = logging.getLogger(__name__)

_random = secrets.SystemRandom()


def session_view(snapshot: dict[str, Any]) -> dict[str, Any]:
    """The session of a snapshot as the API shows it (SessionOut; SessionWithAnswers when the
    snapshot holds answers), with every timestamp in UTC."""
    model = SessionWithAnswers if "pending_answers" in snapshot else SessionOut
    parsed = model.model_validate({**from_columns(snapshot), "remaining_seconds": 0})
    fields: dict[str, Any] = {
        name: value.astimezone(UTC) if isinstance(value, datetime) else value
        for name, value in parsed.model_dump().items()
    }
    return model.model_validate(with_clock(fields)).model_dump(mode="json")


def render_body(delivery: Claimed) -> bytes:
    """The exact bytes POSTed (and signed): the same for every attempt of a delivery."""
    body: dict[str, Any] = {
        "id": delivery.event_id,
        "type": delivery.type,
        "created_at": delivery.created_at.astimezone(UTC).isoformat().replace("+00:00", "Z"),
    }
    if delivery.type == "session.erased":  # no session left to show, and no one named
        body["erasure"] = delivery.payload["erasure"]
    else:
        body["session"] = session_view(delivery.payload)
    if delivery.type == "session.flagged":  # the incident that flagged it (the incidents migration)
        body["incident"] = delivery.payload["incident"]
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()


def backoff(attempts: int, base: float, cap: float) -> float:
    """Seconds before the next try after `attempts` failed ones: exponential, jittered."""
    delay = min(cap, base * 2.0 ** max(0, attempts - 1))
    return float(delay / 2 + _random.uniform(0, delay / 2))


def env_secrets(secret: str | None) -> tuple[str, ...]:
    """INVIGILATOR_WEBHOOK_SECRET: one secret, or several separated by spaces (a rotation)."""
    return tuple(secret.split()) if secret else ()


@functools.cache
def _tls_context() -> ssl.SSLContext:
    """httpx's default context (certifi, or SSL_CERT_FILE / SSL_CERT_DIR), made once per
    process: loading the CA bundle costs ~35 ms of CPU, which every worker start paid."""
    return httpx.create_ssl_context()


class DeliveryWorker:
    def __init__(
        self,
        pool: AsyncConnectionPool[Any],
        policy: Policy,
        *,
        box: SecretBox,
        env_url: str | None,
        env_secret: str | None,
        env_include_answers: bool,
        timeout: float,
        poll_interval: float,
        silent_scan_interval: float,
        backoff_base: float,
        backoff_max: float,
        max_age: float,
        concurrency: int,
        retention: timedelta,
    ) -> None:
        """Every value from the settings (`from_settings`): they are the one table of defaults."""
        if env_url:  # the same rules as the settings' (the worker may be made without them)
            Settings.model_construct(
                webhook_url=env_url, webhook_secret=SecretStr(env_secret) if env_secret else None
            ).check()
        self.outbox = WebhookStore(pool, box)
        self.policy = policy
        self.env_url = env_url
        self.env_secrets = env_secrets(env_secret)
        self.env_include_answers = env_include_answers
        self.timeout = timeout
        self.poll_interval = poll_interval
        self.silent_scan_interval = silent_scan_interval
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.max_age = timedelta(seconds=max_age)
        self.concurrency = concurrency
        self.retention = retention
        #: A worker that dies mid-POST leaves its lease; the delivery is due again after it.
        self.lease = timedelta(seconds=timeout + max(5.0, timeout))
        self.synced = False

    @classmethod
    def from_settings(
        cls, pool: AsyncConnectionPool[Any], settings: Settings, **overrides: Any
    ) -> DeliveryWorker:
        """The worker as `settings` say; `overrides` (tests: a policy, shorter intervals)."""
        s = settings
        values: dict[str, Any] = {
            "policy": s.policy(),
            "box": SecretBox.from_settings(s),
            "env_url": s.webhook_url,
            "env_secret": s.webhook_secret.get_secret_value() if s.webhook_secret else None,
            "env_include_answers": s.webhook_include_answers,
            "timeout": s.webhook_timeout_seconds,
            "poll_interval": s.webhook_poll_interval_seconds,
            "silent_scan_interval": s.webhook_silent_scan_seconds,
            "backoff_base": s.webhook_backoff_base_seconds,
            "backoff_max": s.webhook_backoff_max_seconds,
            "max_age": s.webhook_max_age_seconds,
            "concurrency": s.webhook_concurrency,
            "retention": timedelta(days=s.webhook_retention_days),
        }
        return cls(pool, **{**values, **overrides})

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            verify=_tls_context(),
            timeout=httpx.Timeout(self.timeout),
            follow_redirects=False,
            headers={"User-Agent": f"Invigilator-Webhooks/{__version__}"},
            limits=httpx.Limits(max_connections=self.concurrency),
        )

    # --- one step each ------------------------------------------------------------------------

    async def sync(self) -> None:
        """Bring the INVIGILATOR_WEBHOOK_URL endpoint in line with this process's settings, and
        every stored secret under the current encryption key."""
        await self.outbox.sync_env_endpoint(self.env_url, include_answers=self.env_include_answers)
        await self.outbox.reseal()
        self.synced = True

    async def scan_silent(self) -> int:
        produced = await self.outbox.enqueue_silent(self.policy)
        if produced:
            metrics.WEBHOOK_SILENT.inc(produced)
            log.info("webhooks: %d session(s) went silent", produced)
        return produced

    async def deliver_batch(self, client: httpx.AsyncClient) -> int:
        """Claim what is due (up to `concurrency`), send it all at once; how many were claimed."""
        batch = await self.outbox.claim(
            self.concurrency, self.lease, env_secret_known=bool(self.env_secrets)
        )
        if batch:
            await asyncio.gather(*(self._attempt(client, d) for d in batch))
        return len(batch)

    async def _attempt(self, client: httpx.AsyncClient, delivery: Claimed) -> None:
        secrets = self.env_secrets if delivery.from_env else delivery.secrets
        status: int | None = None
        started = time.perf_counter()
        if not secrets:  # claim_due skips the env endpoint when its secrets are unknown
            error = (
                "no INVIGILATOR_WEBHOOK_ENCRYPTION_KEY decrypts this endpoint's secret; rotate "
                f"it (POST /api/v1/webhooks/{delivery.endpoint_id}/rotate-secret)"
            )
            reason = "secret_unreadable"
        else:
            body = render_body(delivery)
            headers = {
                "Content-Type": "application/json",
                **sign.headers(secrets, delivery.event_id, body),
                "Invigilator-Event-Type": delivery.type,
                "Invigilator-Delivery-Attempt": str(delivery.attempts),
            }
            try:
                response = await client.post(delivery.url, content=body, headers=headers)
                status = response.status_code
                error = "" if 200 <= status < 300 else f"HTTP {status}: {response.text[:200]}"
                reason = f"http_{status}"
            except httpx.TimeoutException:
                error, reason = f"no answer within {self.timeout:g}s", "timeout"
            except httpx.HTTPError as exc:
                error, reason = f"{type(exc).__name__}: {exc}"[:300], "connection"
        metrics.WEBHOOK_LATENCY.observe(time.perf_counter() - started)
        try:
            if not error and status is not None:
                await self.outbox.delivered(delivery, status)
                metrics.WEBHOOK_DELIVERED.labels(type=delivery.type).inc()
                log.info(
                    "webhook delivered: delivery %d (%s) to endpoint %d, attempt %d",
                    delivery.id,
                    delivery.type,
                    delivery.endpoint_id,
                    delivery.attempts,
                )
                return
            metrics.WEBHOOK_FAILURES.labels(reason=reason).inc()
            if status == 410:
                await self.outbox.gone(delivery, error)
                metrics.WEBHOOK_GIVEN_UP.labels(type=delivery.type).inc()
                log.warning(
                    "webhook endpoint %d disabled: its receiver answered 410 Gone "
                    "(delivery %d, %s)",
                    delivery.endpoint_id,
                    delivery.id,
                    delivery.type,
                )
                return
            delay = backoff(delivery.attempts, self.backoff_base, self.backoff_max)
            gave_up = await self.outbox.failed_attempt(
                delivery,
                http_status=status,
                error=error,
                delay=timedelta(seconds=delay),
                max_age=self.max_age,
            )
        except InvigilatorError as exc:
            # Not recorded: the lease runs out and the delivery is tried again (at least once).
            log.warning("webhooks: could not record delivery %d: %s", delivery.id, exc.message)
            return
        if gave_up:
            metrics.WEBHOOK_GIVEN_UP.labels(type=delivery.type).inc()
            log.error(
                "webhook given up: delivery %d (%s) to endpoint %d after %d attempt(s): %s",
                delivery.id,
                delivery.type,
                delivery.endpoint_id,
                delivery.attempts,
                error,
            )
        else:
            log.warning(
                "webhook attempt %d failed: delivery %d (%s) to endpoint %d: %s; retry in %.1fs",
                delivery.attempts,
                delivery.id,
                delivery.type,
                delivery.endpoint_id,
                error,
                delay,
            )

    # --- the loop -----------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Deliver until `stop` is set; survives the database and receivers going away."""
        loop = asyncio.get_running_loop()
        next_scan = next_cleanup = loop.time()
        log.info("webhook worker started")
        async with self.client() as client:
            while not stop.is_set():
                busy = False
                try:
                    if not self.synced:
                        await self.sync()
                    if loop.time() >= next_scan:
                        next_scan = loop.time() + self.silent_scan_interval
                        await self.scan_silent()
                    if loop.time() >= next_cleanup:
                        next_cleanup = loop.time() + 3600
                        await self.outbox.delete_old(self.retention)
                    busy = await self.deliver_batch(client) >= self.concurrency
                except DatabaseUnavailable as exc:
                    log.warning("webhooks: %s; retrying in %.1fs", exc.message, self.poll_interval)
                except InvigilatorError as exc:
                    log.error("webhooks: %s; retrying in %.1fs", exc.message, self.poll_interval)
                except Exception:
                    log.exception("webhook worker step failed; retrying")
                if not busy and not stop.is_set():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), self.poll_interval)
        log.info("webhook worker stopped")


async def start(
    settings: Settings, pool: AsyncConnectionPool[Any], stop: asyncio.Event
) -> asyncio.Task[None] | None:
    """For the app's lifespan: the worker as a task (None when disabled). The environment's
    endpoint is synced before the app serves, when the database answers in time."""
    worker = DeliveryWorker.from_settings(pool, settings)
    if not settings.webhook_worker_enabled:
        # The staff API still creates and rotates secrets: those under an older key move on.
        with contextlib.suppress(InvigilatorError, TimeoutError):
            await asyncio.wait_for(worker.outbox.reseal(), settings.db_connect_timeout_seconds)
        return None
    with contextlib.suppress(InvigilatorError, TimeoutError):
        await asyncio.wait_for(worker.sync(), settings.db_connect_timeout_seconds)
    return asyncio.create_task(worker.run(stop), name="webhooks")
