"""Settings, from the environment only (`DATABASE_URL`, `INVIGILATOR_*`), via pydantic-settings:
the one table of defaults. Everything else takes its values from here (`policy()`, `limits()`,
the pools in db/connector.py, the sweeper and the webhook worker)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Annotated, Literal

import platformdirs
from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from invigilator.domain import (
    AtDeadline,
    ConfigurationError,
    InvalidInput,
    Pages,
    Policy,
    TabClosePolicy,
)
from invigilator.validation import Limits, check_webhook_url


def _default_data_dir() -> Path:
    return Path(platformdirs.user_data_dir("invigilator"))


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="INVIGILATOR_", extra="ignore")

    # No DATABASE_URL: an embedded PostgreSQL in `data_dir` (db/embedded.py).
    database_url: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("DATABASE_URL", "INVIGILATOR_DATABASE_URL")
    )
    data_dir: Path = Field(default_factory=_default_data_dir)

    # Timing rules (seconds); see domain.Policy.
    abandon_after_seconds: float = Field(default=300, gt=0)
    deadline_grace_seconds: float = Field(default=0, ge=0)
    tab_close_grace_seconds: float = Field(default=60, ge=0)
    tab_close_policy: TabClosePolicy = TabClosePolicy.SUBMIT
    # What happens at a session's deadline (each session may say otherwise at its start):
    # submit (completed / timer_expired), grace (for at_deadline_grace_seconds saves are refused
    # and a submit is taken, then as submit), abandon (abandoned / timer_abandoned).
    at_deadline: AtDeadline = AtDeadline.SUBMIT
    at_deadline_grace_seconds: float = Field(default=300, ge=0)
    heartbeat_interval_seconds: float = Field(default=15, gt=0)
    # How long the guide's pending_answers may lag a running session's answers (it mirrors
    # the answer rows; exact at the end). The sweeper refreshes it, so add its interval.
    answers_mirror_delay_seconds: float = Field(default=30, ge=0)
    # A session's page policy when its start names none: `single` (the newest page takes
    # over, an older page's writes are refused) or `multiple` (pages coexist).
    pages: Pages = Pages.SINGLE

    # Database pool and timeouts.
    pool_min_size: int = Field(default=2, ge=1)
    # How long a heartbeat waits for company before its batch is written: fewer commits
    # (WAL flushes) at moderate load for a few ms of latency (BENCHMARKS.md). 0: at once.
    heartbeat_linger_ms: float = Field(default=5, ge=0, le=1000)
    pool_max_size: int = Field(default=10, ge=1)
    db_connect_timeout_seconds: float = Field(default=5, gt=0)
    statement_timeout_ms: int = Field(default=10_000, ge=0)

    # The sweeper inside `invigilator serve`.
    sweeper_enabled: bool = True
    sweep_interval_seconds: float = Field(default=5, gt=0)
    sweep_batch_size: int = Field(default=500, ge=1, le=10_000)

    # Input limits (the API refuses more with 413/422 and changes nothing).
    max_body_bytes: int = Field(default=2 * 1024 * 1024, ge=1024)
    max_answers_bytes: int = Field(default=1024 * 1024, ge=1024)
    max_answer_bytes: int = Field(default=64 * 1024, ge=16)
    max_answers_per_save: int = Field(default=200, ge=1)
    max_sections: int = Field(default=100, ge=1)
    max_json_depth: int = Field(default=16, ge=2)
    # Bulk actions (POST /api/v1/sessions/bulk): at most this many sessions per request, and
    # this many of them acted on at a time (each takes a pooled connection while it runs).
    bulk_max_sessions: int = Field(default=1000, ge=1, le=10_000)
    bulk_concurrency: int = Field(default=4, ge=1, le=64)
    # Bounded reads: a request's headers, then its body, must arrive within these (slow or
    # stalled clients). Headers: the connection is closed; a body: 408 problem+json.
    read_headers_timeout_seconds: float = Field(default=10, gt=0)
    read_body_timeout_seconds: float = Field(default=30, gt=0)

    # Retention: answers and timelines of sessions that ended longer ago are removed by the
    # sweeper (the session rows, which the analytics count, stay). None: kept.
    retention_days: float | None = Field(default=None, gt=0)

    # Rate limits on the candidate API (api/ratelimit.py): per minute, after a burst; 0 = off.
    # Token buckets in each worker process: with N workers the limits are N times these.
    rate_limit_candidate_per_minute: float = Field(default=300, ge=0)
    rate_limit_candidate_burst: int = Field(default=60, ge=1)
    rate_limit_ip_per_minute: float = Field(default=12_000, ge=0)
    rate_limit_ip_burst: int = Field(default=2000, ge=1)

    # Serving.
    demo: bool | None = None  # None: on for the embedded database, off otherwise

    # Webhooks (invigilator.webhooks): the endpoint from the environment, and the delivery
    # worker inside `invigilator serve`. More endpoints: the staff API /api/v1/webhooks.
    webhook_url: str | None = None
    # One whsec_ secret, or several separated by spaces while receivers move to a new one
    # (every delivery is signed with each; the receiver accepts any).
    webhook_secret: SecretStr | None = None
    # Fernet keys for the staff-registered endpoints' secrets at rest (webhooks/vault.py);
    # none: a key derived from secret_key.
    webhook_encryption_key: Annotated[list[SecretStr], NoDecode] = Field(default_factory=list)
    webhook_include_answers: bool = False
    webhook_worker_enabled: bool = True
    webhook_timeout_seconds: float = Field(default=10, gt=0)
    webhook_poll_interval_seconds: float = Field(default=1, gt=0)
    webhook_silent_scan_seconds: float = Field(default=5, gt=0)
    webhook_backoff_base_seconds: float = Field(default=10, gt=0)
    webhook_backoff_max_seconds: float = Field(default=3600, gt=0)
    webhook_max_age_seconds: float = Field(default=24 * 3600, gt=0)
    webhook_concurrency: int = Field(default=8, ge=1, le=100)
    webhook_retention_days: float = Field(default=30, gt=0)

    # Operations: GET /metrics (Prometheus) and logs.
    metrics_enabled: bool = True
    metrics_key: SecretStr | None = None  # a bearer key for scrapers (staff keys work too)
    metrics_public: bool = False  # no key at all (only behind a private network)
    metrics_port: int | None = Field(default=None, ge=1, le=65535)  # a separate listener
    metrics_host: str = "127.0.0.1"
    log_format: Literal["auto", "json", "text"] = "auto"  # auto: JSON unless stderr is a TTY
    log_level: str = "INFO"  # DEBUG adds an access line for each accepted heartbeat
    # FastAPI's native OpenTelemetry (traces, metrics, logs to the providers the process has
    # set up): off by default, it costs ~35 µs a request even with no provider.
    otel: bool = False

    # Staff and candidate credentials (api): never logged, never echoed.
    secret_key: SecretStr | None = None
    admin_keys: Annotated[list[SecretStr], NoDecode] = Field(default_factory=list)
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)

    def policy(self) -> Policy:
        return Policy(
            abandon_after=timedelta(seconds=self.abandon_after_seconds),
            deadline_grace=timedelta(seconds=self.deadline_grace_seconds),
            tab_close_grace=timedelta(seconds=self.tab_close_grace_seconds),
            tab_close_policy=self.tab_close_policy,
            heartbeat_interval=timedelta(seconds=self.heartbeat_interval_seconds),
            answers_mirror_delay=timedelta(seconds=self.answers_mirror_delay_seconds),
            pages=self.pages,
            at_deadline=self.at_deadline,
            grace=timedelta(seconds=self.at_deadline_grace_seconds),
        )

    def limits(self) -> Limits:
        return Limits(
            max_answers_bytes=self.max_answers_bytes,
            max_answer_bytes=self.max_answer_bytes,
            max_answers_per_save=self.max_answers_per_save,
            max_sections=self.max_sections,
            max_json_depth=self.max_json_depth,
            max_bulk_sessions=self.bulk_max_sessions,
            bulk_concurrency=self.bulk_concurrency,
        )

    def check(self) -> None:
        """ConfigurationError, in plain words, for settings that cannot work together. Run when
        settings load, and again by the app factory (settings may be copied with changes)."""
        if self.webhook_url and self.webhook_secret is None:
            raise ConfigurationError(
                "INVIGILATOR_WEBHOOK_SECRET must be set with INVIGILATOR_WEBHOOK_URL "
                "(every webhook is signed)"
            )
        if self.webhook_url:
            try:
                check_webhook_url(self.webhook_url)
            except InvalidInput as exc:
                raise ConfigurationError(f"INVIGILATOR_WEBHOOK_URL: {exc.message}") from None
        # Receivers' libraries base64-decode what follows whsec_: anything else verifies
        # differently in one or another, so it is refused here, before anything starts.
        from invigilator.webhooks.vault import parse_keys, secret_problem

        secrets = self.webhook_secret.get_secret_value().split() if self.webhook_secret else []
        if self.webhook_url and not secrets:
            raise ConfigurationError("INVIGILATOR_WEBHOOK_SECRET must not be empty")
        for position, one in enumerate(secrets, 1):
            problem = secret_problem(one)
            if problem:
                raise ConfigurationError(
                    f"INVIGILATOR_WEBHOOK_SECRET (secret {position}) {problem}; make one with "
                    '`python -c \'import base64,os; print("whsec_" + '
                    "base64.b64encode(os.urandom(32)).decode())'`"
                )
        try:
            parse_keys([k.get_secret_value() for k in self.webhook_encryption_key])
        except ValueError as exc:
            raise ConfigurationError(str(exc)) from None

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        try:
            self.check()
        except ConfigurationError as exc:
            raise ValueError(exc.message) from None
        return self

    def retention(self) -> timedelta | None:
        """INVIGILATOR_RETENTION_DAYS as the sweeper takes it (None: keep everything)."""
        return timedelta(days=self.retention_days) if self.retention_days else None

    @field_validator("admin_keys", "cors_origins", "webhook_encryption_key", mode="before")
    @classmethod
    def _split_csv(cls, value: object) -> object:
        """Comma-separated in the environment: `INVIGILATOR_ADMIN_KEYS=key1,key2`."""
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value
