"""Realistic synthetic candidates, sessions and events, for demos and benchmarks
(`invigilator demo-data`). The distributions are below, and explained in docs/analytics.md.

`generate_demo` makes the rows (deterministic for a seed and a clock); `load_demo_data` COPYs
them into a database in one transaction.
"""

from __future__ import annotations

import json
import math
import random
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, NamedTuple

import psycopg

from invigilator.config import Settings
from invigilator.domain import Policy

# The distributions (docs/analytics.md repeats them):
#: test length in minutes, and its weight
DEMO_DURATIONS = ((30, 0.15), (45, 0.20), (60, 0.40), (90, 0.15), (120, 0.10))
#: sections a test of that length has (the first N of DEMO_SECTIONS)
DEMO_SECTION_COUNT = {30: 3, 45: 3, 60: 4, 90: 5, 120: 6}
DEMO_SECTIONS = ("reading", "listening", "grammar", "writing", "reasoning", "numeracy")
#: relative volume of sessions per weekday, Monday first
DEMO_WEEKDAY_WEIGHT = (1.0, 1.0, 1.0, 1.0, 0.9, 0.45, 0.35)
#: start hour (UTC) as a mixture of normals: (mean hour, sd hours, weight)
DEMO_START_HOUR = ((10.5, 1.5, 0.45), (15.0, 2.0, 0.40), (20.5, 1.5, 0.15))
#: share of candidates whose session is running right now
DEMO_ACTIVE_SHARE = 0.02

# Precomputed JSON texts, by number of sections (the generator's hot loop only picks them).
_SECTIONS_JSON = [json.dumps(list(DEMO_SECTIONS[:n])) for n in range(len(DEMO_SECTIONS) + 1)]
_ANSWER_KEYS = [
    [f'"{sec}-q{q}": ' for sec in DEMO_SECTIONS[:n] for q in (1, 2, 3)]
    for n in range(len(DEMO_SECTIONS) + 1)
]
_ANSWER_SEQ_JSON = [
    json.dumps({f"{sec}-q{q}": k + 1 for k, sec in enumerate(DEMO_SECTIONS[:n]) for q in (1, 2, 3)})
    for n in range(len(DEMO_SECTIONS) + 1)
]
_SAVED_DETAIL = [
    json.dumps({"questions": [f"{sec}-q{q}" for q in (1, 2, 3)], "seq": k + 1})
    for k, sec in enumerate(DEMO_SECTIONS)
]
_SECTION_DETAIL = [
    json.dumps({"section": sec, "count": k + 1}) for k, sec in enumerate(DEMO_SECTIONS)
]
_END_ACTOR = {"manual": "candidate", "admin": "staff", "admin_terminated": "staff"}
_FOCUS_KINDS = (("tab_hidden", "tab_visible"), ("focus_lost", "focus_regained"))
_GAVE_UP = frozenset({"heartbeat_timeout", "tab_close", "admin_terminated"})

SESSION_COLUMNS = (
    "candidate_id, test_start_time, test_duration_minutes, extra_minutes, last_heartbeat, "
    "last_activity, status, completion_method, completed_at, sections_completed, "
    "planned_sections, pending_answers, answer_seq, created_at, updated_at, deadline"
)
EventRow = tuple[str, str, datetime, str, str]


@dataclass
class DemoBatch:
    """Rows for COPY: candidates, sessions and events of a slice of the candidates."""

    candidates: list[tuple[str]] = field(default_factory=list)
    sessions: list[tuple[Any, ...]] = field(default_factory=list)
    events: list[EventRow] = field(default_factory=list)
    active: list[str] = field(default_factory=list)  # the ids of the sessions running now


@dataclass
class DemoTotals:
    candidates: int = 0
    sessions: int = 0
    events: int = 0
    active: int = 0


def load_demo_data(
    url: str,
    candidates: int,
    *,
    seed: int = 1,
    days: int = 30,
    policy: Policy | None = None,
    on_progress: Callable[[int], None] | None = None,
    chunk: int = 5000,
) -> DemoTotals:
    """Generate and COPY `candidates` candidates with one session each, in one transaction
    (all or nothing), then ANALYZE. Times are relative to the database clock. `on_progress`
    hears how many candidates each batch added.

    A role that may (a superuser, such as the embedded database's) loads with triggers and
    foreign-key checks off for the transaction (`session_replication_role = replica`, what
    pg_restore --disable-triggers does): the rows are complete and consistent by construction
    (parents first, `deadline` computed), and the checks are most of the load's cost. Any
    other role loads through them as usual.
    """
    totals = DemoTotals()
    policy = policy or Settings().policy()
    active: list[str] = []
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT now()").fetchone()
        assert row is not None
        now: datetime = row[0]
        try:
            with conn.transaction():  # a savepoint: a refusal leaves the load going
                conn.execute("SET LOCAL session_replication_role = replica")
        except psycopg.errors.InsufficientPrivilege:
            pass
        with conn.cursor() as cur:
            for batch in generate_demo(
                candidates, seed=seed, days=days, now=now, policy=policy, chunk=chunk
            ):
                with cur.copy("COPY candidate (candidate_id) FROM STDIN") as copy:
                    for crow in batch.candidates:
                        copy.write_row(crow)
                with cur.copy(f"COPY test_session ({SESSION_COLUMNS}) FROM STDIN") as copy:
                    for srow in batch.sessions:
                        copy.write_row(srow)
                with cur.copy(
                    "COPY test_session_event (candidate_id, type, at, actor, detail) FROM STDIN"
                ) as copy:
                    for erow in batch.events:
                        copy.write_row(erow)
                totals.candidates += len(batch.candidates)
                totals.sessions += len(batch.sessions)
                totals.events += len(batch.events)
                active.extend(batch.active)
                if on_progress is not None:
                    on_progress(len(batch.candidates))
            # The running sessions were made relative to the transaction's start; a large load
            # takes minutes, so bring their heartbeats up to the moment of the commit. The shift
            # is read first: Citus refuses a VOLATILE clock_timestamp() (and a STABLE `+` over
            # a column) in an UPDATE of a distributed table.
            shift = cur.execute("SELECT clock_timestamp() - now()").fetchone()
            assert shift is not None
            cur.execute(
                "UPDATE test_session"
                "   SET last_heartbeat = invigilator_plus(last_heartbeat, %s::interval),"
                "       last_activity = invigilator_plus(last_activity, %s::interval)"
                " WHERE status = 'active' AND candidate_id::text = ANY(%s::text[])",
                (shift[0], shift[0], active),
            )
            totals.active = len(active)
        conn.commit()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("ANALYZE candidate, test_session, test_session_event")
    return totals


def generate_demo(
    candidates: int,
    *,
    seed: int,
    days: int,
    now: datetime,
    policy: Policy,
    chunk: int = 5000,
) -> Iterator[DemoBatch]:
    """Synthetic sessions and their events, deterministic for a seed and a `now`, with the
    distributions of the table in docs/analytics.md (`invigilator demo-data`).

    Rows come in order of start time with increasing candidate ids (uuid-shaped, so a uuid
    key works too): the indexes grow at their right edge, as they do in real life, which
    keeps the load fast.
    """
    gen = _Generator(seed, now, policy)
    batch = DemoBatch()
    for i, plan in enumerate(gen.plans(candidates, days)):
        gen.add_session(batch, str(uuid.UUID(int=gen.prefix | i, version=4)), plan)
        if len(batch.candidates) >= chunk:
            yield batch
            batch = DemoBatch()
    if batch.candidates:
        yield batch


class _Plan(NamedTuple):
    """When a session starts (epoch seconds) and how long it may last (in this order, so that
    plans sort by start)."""

    start: float
    duration: int
    extra: int
    active: bool


def _allowed(plan: _Plan) -> float:
    return (plan.duration + plan.extra) * 60.0


class _Outcome(NamedTuple):
    status: str
    method: str | None
    ended: float | None
    heartbeat: float
    sections: int
    stop: float  # when the candidate's activity stops (the last heartbeat of a running one)


class _Generator:
    """The steps of `generate_demo`. Every draw comes from one seeded generator, in an order
    that is part of the output: a change of order changes every session after it."""

    def __init__(self, seed: int, now: datetime, policy: Policy) -> None:
        self.rng = random.Random(seed)  # noqa: S311  (reproducible demo data, not secrets)
        # Candidate ids: a prefix of the seed's, then a counter (so a second load with the
        # same seed collides at once instead of silently adding a near copy).
        self.prefix = self.rng.getrandbits(64) << 64
        self.utc = now.tzinfo
        self.t_now = now.timestamp()
        self.midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
        self.abandon = policy.abandon_after.total_seconds()

    def plans(self, candidates: int, days: int) -> list[_Plan]:
        """Each session's start and length, in order of start."""
        rng, t_now = self.rng, self.t_now
        choices, rand, uniform = rng.choices, rng.random, rng.uniform
        t_midnight = self.midnight.timestamp()
        day_offsets = list(range(days))
        day_cum = _cumulative(
            [
                DEMO_WEEKDAY_WEIGHT[(self.midnight - timedelta(days=d)).weekday()]
                for d in day_offsets
            ]
        )
        durations = [d for d, _ in DEMO_DURATIONS]
        duration_cum = _cumulative([w for _, w in DEMO_DURATIONS])
        hour_cum = _cumulative([w for _, _, w in DEMO_START_HOUR])
        n_active = min(candidates, max(1, round(candidates * DEMO_ACTIVE_SHARE)))
        active_ids = set(rng.sample(range(candidates), n_active))
        plans: list[_Plan] = []
        for i in range(candidates):
            duration = choices(durations, cum_weights=duration_cum)[0]
            extra = rng.choice((10, 15, 30)) if rand() < 0.03 else 0
            allowed = (duration + extra) * 60.0
            if i in active_ids:
                start = t_now - uniform(120.0, allowed - 60.0)
            else:
                # a start that leaves the session time to end before now, drawn again until
                # it does (a handful of tries; then the latest such start)
                latest = t_now - allowed - 300.0
                for _ in range(20):
                    day = choices(day_offsets, cum_weights=day_cum)[0]
                    mean, sd, _ = choices(DEMO_START_HOUR, cum_weights=hour_cum)[0]
                    start = t_midnight - day * 86400.0 + (rng.gauss(mean, sd) % 24) * 3600.0
                    if start <= latest:
                        break
                else:
                    start = latest - uniform(0.0, 3600.0)
            plans.append(_Plan(start, duration, extra, i in active_ids))
        plans.sort()
        return plans

    def outcome(self, plan: _Plan) -> _Outcome:
        rng = self.rng
        rand, uniform = rng.random, rng.uniform
        start, allowed = plan.start, _allowed(plan)
        n_sections = DEMO_SECTION_COUNT[plan.duration]
        deadline = start + allowed
        if plan.active:
            t_now = self.t_now
            heartbeat = t_now - (uniform(0.0, 14.0) if rand() < 0.88 else uniform(35.0, 200.0))
            heartbeat = max(heartbeat, start)
            sections = int((t_now - start) / allowed * n_sections)
            return _Outcome("active", None, None, heartbeat, sections, heartbeat)
        hour = int((start % 86400.0) // 3600.0)
        p_gave_up = (
            0.10
            + (0.05 if plan.duration >= 90 else 0.0)
            + (0.06 if hour >= 21 or hour < 6 else 0.0)
        )
        if rand() < p_gave_up:
            r = rand()
            method = "heartbeat_timeout" if r < 0.70 else "tab_close"
            if r >= 0.92:
                method = "admin_terminated"
            share = uniform(0.0, 0.1) if rand() < 0.35 else rng.betavariate(2, 2.2)
            left = start + share * allowed
            if method == "heartbeat_timeout":
                if left + self.abandon >= deadline:
                    left = max(start, deadline - self.abandon - uniform(1.0, 60.0))
                ended, heartbeat = left + self.abandon, left
            else:
                ended, heartbeat = left, max(start, left - uniform(0.0, 15.0))
            status = "completed" if method == "tab_close" else "abandoned"
            sections = min(n_sections, int((left - start) / allowed * n_sections))
            return _Outcome(status, method, ended, heartbeat, sections, left)
        r = rand()
        if r < 0.84 or r >= 0.98:
            method = "manual" if r < 0.84 else "admin"
            ended = start + min(max(rng.betavariate(6, 2.5), 0.05), 0.995) * allowed
            sections = n_sections if rand() < 0.92 else n_sections - 1
        else:
            method, ended = "timer_expired", deadline
            q = rand()
            sections = max(0, n_sections - (0 if q < 0.3 else 1 if q < 0.8 else 2))
        heartbeat = max(start, ended - uniform(0.0, 15.0))
        return _Outcome("completed", method, ended, heartbeat, sections, ended)

    def add_session(self, batch: DemoBatch, cid: str, plan: _Plan) -> None:
        """The plan's outcome, its candidate, session row and events, into `batch`."""
        rng, stamp, utc = self.rng, datetime.fromtimestamp, self.utc
        o = self.outcome(plan)
        if o.status == "active":
            batch.active.append(cid)
        bits = rng.getrandbits(6 * o.sections) if o.sections else 0
        answers = ", ".join(
            f'{key}"{"ABCD"[(bits >> (2 * j)) & 3]}"'
            for j, key in enumerate(_ANSWER_KEYS[o.sections])
        )
        started_at = stamp(plan.start, utc)
        ended_at = stamp(o.ended, utc) if o.ended is not None else None
        heartbeat_at = stamp(o.heartbeat, utc)
        last_activity = stamp(max(plan.start, o.heartbeat - rng.uniform(0.0, 30.0)), utc)
        batch.candidates.append((cid,))
        batch.sessions.append(
            (
                cid,
                started_at,
                plan.duration,
                plan.extra,
                heartbeat_at,
                last_activity,
                o.status,
                o.method,
                ended_at,
                _SECTIONS_JSON[o.sections],
                _SECTIONS_JSON[DEMO_SECTION_COUNT[plan.duration]],
                "{" + answers + "}",
                _ANSWER_SEQ_JSON[o.sections],
                started_at,
                ended_at or heartbeat_at,
                stamp(plan.start + _allowed(plan), utc),
            )
        )
        self.add_events(batch.events, cid, plan, o, started_at, ended_at)

    def add_events(
        self,
        events: list[EventRow],
        cid: str,
        plan: _Plan,
        o: _Outcome,
        started_at: datetime,
        ended_at: datetime | None,
    ) -> None:
        rng, stamp, utc = self.rng, datetime.fromtimestamp, self.utc
        rand, uniform = rng.random, rng.uniform
        start = plan.start
        span = o.stop - start
        events.append(
            (cid, "started", started_at, "system", f'{{"duration_minutes": {plan.duration}}}')
        )
        for k in range(o.sections):
            at = start + span * (k + 1) / (o.sections + 1)
            events.append(
                (cid, "answers_saved", stamp(at - 2.0, utc), "candidate", _SAVED_DETAIL[k])
            )
            events.append(
                (cid, "section_completed", stamp(at, utc), "candidate", _SECTION_DETAIL[k])
            )
        for _ in range(_poisson(rng, 1.8 if o.method in _GAVE_UP else 0.6)):
            lost = start + span * rand()
            kinds = _FOCUS_KINDS[rand() < 0.5]
            events.append((cid, kinds[0], stamp(lost, utc), "candidate", "{}"))
            back = lost + rng.expovariate(1 / 25)
            if back < o.stop:
                events.append((cid, kinds[1], stamp(back, utc), "candidate", "{}"))
        if rand() < 0.06 and span > 120.0:
            resumed_at = stamp(start + span * rand(), utc)
            gap = f'{{"gap_seconds": {uniform(31, 200):.1f}, "after_tab_close": false}}'
            events.append((cid, "resumed", resumed_at, "candidate", gap))
        if plan.extra:
            extended_at = stamp(start + span * uniform(0.2, 0.8), utc)
            deadline = stamp(start + _allowed(plan), utc).isoformat()
            detail = (
                f'{{"minutes": {plan.extra}, "reason": "accommodation", "deadline": "{deadline}"}}'
            )
            events.append((cid, "time_extended", extended_at, "staff", detail))
        if o.method is not None and ended_at is not None:
            if o.method == "tab_close":
                events.append((cid, "tab_closed", ended_at, "candidate", "{}"))
            actor = _END_ACTOR.get(o.method, "sweeper")
            events.append((cid, o.status, ended_at, actor, f'{{"method": "{o.method}"}}'))


def _poisson(rng: random.Random, lam: float) -> int:
    limit, k, p = math.exp(-lam), 0, rng.random()
    while p > limit:
        k += 1
        p *= rng.random()
    return k


def _cumulative(weights: Sequence[float]) -> list[float]:
    total, out = 0.0, []
    for w in weights:
        total += w
        out.append(total)
    return out
