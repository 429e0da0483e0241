-- The read-only queries of invigilator.analytics (the CLI report, the API and the dashboard).
-- Each block: a `-- name --` header, a one-line description, then one statement.
-- docs/analytics.md defines every metric; the rules all of them share:
--
-- * The window: a session belongs to [since, until) by its test_start_time (half-open, so
--   consecutive windows never count a session twice). The index idx_test_session_test_start_time
--   serves it.
-- * Lazy expiry: a row still stored `active` that is no longer open (test_session_open) is
--   counted as the sweeper will end it: same status, method and completed_at (the rules of
--   migration 0003). Only the rows stored active pay for the rules; `overdue_unswept` says
--   how many were counted this way.
-- * Everything is defined on an empty window: counts are 0, rates and statistics are null
--   (never a division by zero), histograms are dense lists (empty when there is nothing).

-- window --
-- The report window on the database clock: [since, until), by default the `default_span` up to now.
SELECT coalesce(%(since)s::timestamptz,
                coalesce(%(until)s::timestamptz, now()) - %(default_span)s::interval) AS since,
       coalesce(%(until)s::timestamptz, now()) AS until;

-- longer_timeout --
-- This transaction's statement_timeout raised to %(ms)s ms from a shorter one (never from 0).
SELECT set_config('statement_timeout', %(ms)s::bigint::text, true)
 WHERE (SELECT setting::bigint FROM pg_settings WHERE name = 'statement_timeout')
       BETWEEN 1 AND %(ms)s::bigint - 1;

-- _raw_cells --
-- What the report takes of the sessions it reads one by one: `s`, a narrow row per session
-- (its duration, share, sections, when it was left: the entries of the lists the statistics
-- are taken over), `raw_cells`, every count the summary adds up by local day (in %(tz)s), and
-- `raw_sections`. What `rollup_build` keeps of a quarter hour, and what the summary reads
-- where nothing is kept: written once, here. `(/*raw*/ false)` stands for
-- the sessions' ranges of start times, which invigilator.analytics writes in as constants
-- (a start at or after lo0 and before hi0, or …, each a parameter), so the planner knows
-- how many sessions that is: a few hundred for a quarter hour, a million for a month.
stored AS (
    -- Ended rows as stored, and active ones as they truly are (lazy expiry): only the active
    -- rows, a small share, pay for the rules.
    SELECT t.candidate_id, t.test_start_time, t.deadline, t.sections_completed,
           t.status, t.completion_method AS method, t.completed_at AS ended_at,
           false AS overdue, t.last_heartbeat, t.paused_seconds, t.paused_at, t.pause_count,
           t.reopen_count, t.awaiting_candidate
      FROM test_session t
     WHERE (/*raw*/ false)
       AND t.status <> 'active'
    UNION ALL
    SELECT t.candidate_id, t.test_start_time, t.deadline, t.sections_completed,
           coalesce(test_session_status_of(due.method), 'active'),
           due.method, due.ends_at, due.method IS NOT NULL, t.last_heartbeat,
           t.paused_seconds, t.paused_at, t.pause_count, t.reopen_count, t.awaiting_candidate
      FROM test_session t
      CROSS JOIN invigilator_rules(%(policy)s::jsonb) AS c
      LEFT JOIN LATERAL (
          SELECT test_session_end_method(t.status, t.deadline, t.last_heartbeat, t.test_start_time,
                                         t.tab_closed_at, t.paused_at, t.resumed_at, t.abandon_after_seconds,
                                         t.tab_close, t.at_deadline, t.grace_seconds, t.time_multiplier, c) AS method,
                 test_session_ends_at(t.status, t.deadline, t.last_heartbeat, t.test_start_time,
                                      t.tab_closed_at, t.paused_at, t.resumed_at, t.abandon_after_seconds,
                                      t.tab_close, t.at_deadline, t.grace_seconds, t.time_multiplier, c) AS ends_at
           WHERE NOT test_session_open(t.status, t.deadline, t.last_heartbeat, t.test_start_time,
                                       t.tab_closed_at, t.paused_at, t.resumed_at, t.abandon_after_seconds,
                                       t.tab_close, t.at_deadline, t.grace_seconds, t.time_multiplier, c)
      ) due ON true
     WHERE (/*raw*/ false)
       AND t.status = 'active'
), s AS MATERIALIZED (
    -- One narrow row per session: what its counts (`raw_cells`) and its entries in the lists
    -- (durations, sections, leavers) are taken from.
    SELECT (x.test_start_time AT TIME ZONE %(tz)s::text)::date AS day,
           jsonb_array_length(x.sections_completed) AS sections,
           x.status, x.method, x.overdue,
           d.duration_s,
           -- The share of its time a completed session used. The clock's time only: every
           -- second it stood still (pauses, a reopened session's wait and its time ended) is
           -- left out of both.
           d.duration_s / nullif(date_part('epoch', x.deadline - x.test_start_time)
                                 - x.paused_seconds, 0) AS share,
           x.pause_count > 0 AS was_paused,
           -- paused by staff now (not a reopened session waiting for its page)
           x.status = 'active' AND x.paused_at IS NOT NULL AND NOT x.awaiting_candidate
               AS paused_now,
           x.reopen_count,
           test_session_gave_up(x.method) AS gave_up,
           l.left_at,
           -- whole minutes into the test when the candidate left
           floor(greatest(date_part('epoch', l.left_at - x.test_start_time), 0) / 60)::integer
               AS left_minute,
           -- Who gave up, and when their session ended: `focus` probes the event log for them.
           CASE WHEN test_session_gave_up(x.method) THEN x.candidate_id END AS leaver_id,
           CASE WHEN test_session_gave_up(x.method) THEN x.ended_at END AS leaver_end
      FROM stored x
     CROSS JOIN LATERAL (
           SELECT CASE WHEN x.status = 'completed'
                       THEN greatest(date_part('epoch', x.ended_at - x.test_start_time)
                                     - x.paused_seconds, 0) END AS duration_s) d
     CROSS JOIN LATERAL (
           -- When the candidate left: last heard of for a heartbeat timeout, else the end.
           SELECT CASE WHEN x.method = 'heartbeat_timeout'
                       THEN least(coalesce(x.last_heartbeat, x.test_start_time), x.ended_at)
                       WHEN x.method IN ('tab_close', 'admin_terminated') THEN x.ended_at
                  END AS left_at) l
), spread AS (
    -- Sessions whose pages came from more than one device (user agent) or address
    -- (migration 0007): the sessions joined to their page claims by candidate_id, so the
    -- planner picks: a probe of the claims per session for a few, one pass over the claims for
    -- many. The sessions are read again rather than from `stored`: Citus joins two tables on
    -- their distribution column on each shard, and cannot push a join with a CTE down. "More
    -- than one" is asked as "the least and the greatest differ": count(DISTINCT) sorts within
    -- every group.
    SELECT (y.started_at AT TIME ZONE %(tz)s::text)::date AS day,
           count(*) AS devices_either,
           count(*) FILTER (WHERE y.devices) AS devices,
           count(*) FILTER (WHERE y.addresses) AS addresses
      FROM (SELECT t.test_start_time AS started_at,
                   min(coalesce(p.user_agent, '')) <> max(coalesce(p.user_agent, ''))
                       AS devices,
                   min(coalesce(p.client_address, '')) <> max(coalesce(p.client_address, ''))
                       AS addresses
              FROM test_session t
              JOIN test_session_page p ON p.candidate_id = t.candidate_id
             WHERE (/*raw*/ false)
             GROUP BY t.candidate_id, t.test_start_time) y
     WHERE y.devices OR y.addresses
     GROUP BY 1
), focus AS (
    -- Those who gave up and lost focus (or hid the tab) before the end: one probe of the
    -- event log by candidate_id per such session (idx_test_session_event_focus). A join, not
    -- a correlated EXISTS: Citus joins the sessions to each shard's events, and refuses a
    -- correlated subquery here.
    SELECT s.day, count(DISTINCT s.leaver_id) AS gave_up_focus
      FROM s
      JOIN test_session_event e
        ON e.candidate_id = s.leaver_id
       AND e.type IN ('focus_lost', 'tab_hidden')
       AND e.at <= s.leaver_end
     WHERE s.leaver_id IS NOT NULL
     GROUP BY 1
), raw_cells AS (
    -- The counts, by local day.
    SELECT a.*, coalesce(f.gave_up_focus, 0) AS gave_up_focus,
           coalesce(sp.devices_either, 0) AS devices_either, coalesce(sp.devices, 0) AS devices,
           coalesce(sp.addresses, 0) AS addresses
      FROM (SELECT day,
                   count(*) AS sessions,
                   count(*) FILTER (WHERE status = 'active') AS active,
                   count(*) FILTER (WHERE status = 'completed') AS completed,
                   count(*) FILTER (WHERE status = 'abandoned') AS abandoned,
                   count(*) FILTER (WHERE overdue) AS overdue,
                   count(*) FILTER (WHERE method = 'manual') AS manual,
                   count(*) FILTER (WHERE method = 'timer_expired') AS timer_expired,
                   count(*) FILTER (WHERE method = 'tab_close') AS tab_close,
                   count(*) FILTER (WHERE method = 'admin') AS admin,
                   count(*) FILTER (WHERE method = 'heartbeat_timeout') AS heartbeat_timeout,
                   count(*) FILTER (WHERE method = 'admin_terminated') AS admin_terminated,
                   count(*) FILTER (WHERE method = 'timer_abandoned') AS timer_abandoned,
                   count(*) FILTER (WHERE was_paused) AS paused,
                   count(*) FILTER (WHERE paused_now) AS paused_now,
                   count(*) FILTER (WHERE reopen_count > 0) AS reopened,
                   coalesce(sum(reopen_count), 0) AS reopenings,
                   count(*) FILTER (WHERE gave_up) AS gave_up
              FROM s GROUP BY day) a
      LEFT JOIN focus f ON f.day = a.day
      LEFT JOIN spread sp ON sp.day = a.day
), raw_sections AS (
    -- Sessions by sections completed, and of them who gave up.
    SELECT sections AS k, count(*)::integer AS n,
           (count(*) FILTER (WHERE gave_up))::integer AS gave_up
      FROM s GROUP BY 1
), raw_minutes AS (
    -- Completed sessions by whole minutes of duration (the histogram, and the bins the exact
    -- percentiles are looked up in).
    SELECT floor(duration_s / 60)::integer AS m, count(*)::integer AS n
      FROM s WHERE duration_s IS NOT NULL GROUP BY 1
), raw_share_bins AS (
    -- Completed sessions by hundredths of the share of their time they used.
    SELECT floor(share * 100)::integer AS m, count(*)::integer AS n
      FROM s WHERE share IS NOT NULL GROUP BY 1
)

-- _rolled --
-- The window's quarter hours whose sessions are all ended and rolled up (migration 0014), each
-- within one local day and hour of %(tz)s (every zone's offset is a whole number of quarter
-- hours today; a change of offset inside one leaves it to its sessions).
    SELECT r.*, (r.bucket AT TIME ZONE %(tz)s::text)::date AS day
      FROM test_session_rollup r
     WHERE r.ready
       AND r.bucket >= %(since)s::timestamptz
       AND r.bucket + interval '15 minutes' <= %(until)s::timestamptz
       AND date_part('minute', r.bucket AT TIME ZONE %(tz)s::text)::integer %% 15 = 0
       AND date_part('second', r.bucket AT TIME ZONE %(tz)s::text) = 0
       AND (r.bucket + interval '15 minutes') AT TIME ZONE %(tz)s::text
           = (r.bucket AT TIME ZONE %(tz)s::text) + interval '15 minutes'

-- summary_parts --
-- The ranges of the window whose sessions the summary reads one by one: before, between and
-- after the runs of rolled-up quarter hours (all of it when none is).
WITH rolled AS (
-- include: _rolled
), islands AS (
    SELECT min(bucket) AS lo, max(bucket) + interval '15 minutes' AS hi
      FROM (SELECT bucket, bucket - interval '15 minutes' * row_number() OVER (ORDER BY bucket) AS run
              FROM rolled) x
     GROUP BY run
)
SELECT lo, hi
  FROM (SELECT coalesce(lag(hi) OVER (ORDER BY lo), %(since)s::timestamptz) AS lo, lo AS hi
          FROM islands
        UNION ALL
        SELECT coalesce(max(hi), %(since)s::timestamptz), %(until)s::timestamptz FROM islands) g
 WHERE lo < hi
 ORDER BY lo;

-- summary --
-- Every metric of the report as one JSON object, for the sessions that started in [since, until):
-- the rolled-up quarter hours outside part_lo/part_hi (the ranges read one by one,
-- `summary_parts`, perhaps merged), and the sessions of those ranges.
WITH rolled AS (
-- include: _rolled
       AND NOT EXISTS (SELECT 1
                         FROM unnest(%(part_lo)s::timestamptz[], %(part_hi)s::timestamptz[]) AS p (lo, hi)
                        WHERE r.bucket < p.hi AND r.bucket + interval '15 minutes' > p.lo)
),
-- include: _raw_cells
, cells AS (
    SELECT day, sessions, active, completed, abandoned, overdue, manual, timer_expired,
           tab_close, admin, heartbeat_timeout, admin_terminated, timer_abandoned, paused,
           paused_now, reopened, reopenings, gave_up, gave_up_focus, devices_either, devices,
           addresses
      FROM raw_cells
    UNION ALL
    SELECT day, sessions, 0, completed, abandoned, 0, manual, timer_expired,
           tab_close, admin, heartbeat_timeout, admin_terminated, timer_abandoned, paused,
           0, reopened, reopenings, gave_up, gave_up_focus, devices_either, devices,
           addresses
      FROM rolled
), bins AS (
    -- The two lists the median and p90 are taken over, as histograms: durations (l = 0) by whole
    -- minute, shares (l = 1) by hundredths; each rolled-up row's list is sorted and its bins in
    -- step with it, so a bin's values are one slice of the list.
    SELECT l, m, sum(n)::bigint AS n,
           (sum(sum(n)) OVER (PARTITION BY l ORDER BY m) - sum(n))::bigint AS before
      FROM (SELECT 0 AS l, m, n FROM raw_minutes
            UNION ALL
            SELECT 0, u.m, u.n
              FROM rolled r
             CROSS JOIN LATERAL unnest(r.duration_minute, r.duration_minute_n) AS u (m, n)
            UNION ALL
            SELECT 1, m, n FROM raw_share_bins
            UNION ALL
            SELECT 1, u.m, u.n
              FROM rolled r CROSS JOIN LATERAL unnest(r.share_bin, r.share_bin_n) AS u (m, n)) x
     GROUP BY l, m
), ranks AS (
    -- percentile_cont's rows for each fraction, as PostgreSQL takes them: the value at
    -- floor(f (N - 1)) and at ceil(f (N - 1)) (from 0), and the proportion between them.
    SELECT c.l, f.f, p.pos, floor(p.pos)::bigint AS k0, ceil(p.pos)::bigint AS k1
      FROM (SELECT l, sum(n) AS total FROM bins GROUP BY l) c
     CROSS JOIN unnest(ARRAY[0.5, 0.9]::float8[]) WITH ORDINALITY AS f (f, i)
     CROSS JOIN LATERAL (SELECT f.f * (c.total - 1)::float8 AS pos) p
), located AS (
    -- Each such row: its bin, and its place among the bin's values.
    SELECT DISTINCT w.l, w.k, b.m, w.k - b.before AS idx
      FROM (SELECT l, k0 AS k FROM ranks UNION SELECT l, k1 FROM ranks) w
      JOIN bins b ON b.l = w.l AND w.k >= b.before AND w.k < b.before + b.n
), candidates AS (
    -- The values of the bins those rows fall in (a few of the million): the sessions read one
    -- by one, and the slice of each rolled-up row's sorted list.
    SELECT b.l, b.m, s.duration_s AS v
      FROM (SELECT DISTINCT l, m FROM located) b
      JOIN s ON b.l = 0 AND s.duration_s IS NOT NULL AND floor(s.duration_s / 60)::integer = b.m
    UNION ALL
    SELECT b.l, b.m, s.share
      FROM (SELECT DISTINCT l, m FROM located) b
      JOIN s ON b.l = 1 AND s.share IS NOT NULL AND floor(s.share * 100)::integer = b.m
    UNION ALL
    SELECT b.l, b.m, u.v
      FROM (SELECT DISTINCT l, m FROM located) b
     CROSS JOIN rolled r
     CROSS JOIN LATERAL (
           SELECT CASE b.l WHEN 0 THEN r.durations ELSE r.shares END AS list,
                  CASE b.l WHEN 0 THEN r.duration_minute_n ELSE r.share_bin_n END AS counts,
                  array_position(CASE b.l WHEN 0 THEN r.duration_minute ELSE r.share_bin END,
                                 b.m) AS i) x
     CROSS JOIN LATERAL (
           SELECT coalesce((SELECT sum(c) FROM unnest(x.counts[1:x.i - 1]) c), 0)::integer
                      AS skip,
                  x.counts[x.i] AS take) o
     CROSS JOIN LATERAL unnest(x.list[o.skip + 1:o.skip + o.take]) AS u (v)
     WHERE x.i IS NOT NULL
), valued AS (
    -- The bins' values in order, once, and the ones at the rows looked for.
    SELECT lo.l, lo.k, c.v
      FROM (SELECT l, m, v, row_number() OVER (PARTITION BY l, m ORDER BY v) - 1 AS idx
              FROM candidates) c
      JOIN located lo ON lo.l = c.l AND lo.m = c.m AND lo.idx = c.idx
), percentiles AS (
    SELECT r.l,
           array_agg(CASE WHEN r.k0 = r.k1 THEN a.v ELSE a.v + ((r.pos - r.k0) * (b.v - a.v)) END
                     ORDER BY r.f) AS p
      FROM ranks r
      JOIN valued a ON a.l = r.l AND a.k = r.k0
      JOIN valued b ON b.l = r.l AND b.k = r.k1
     GROUP BY r.l
), means AS (
    -- Exact sums (numeric), so the mean does not depend on the order they are added in.
    SELECT sum(dn) AS duration_n, sum(dt) / nullif(sum(dn), 0) AS duration_mean,
           sum(st) / nullif(sum(sn), 0) AS share_mean
      FROM (SELECT count(duration_s) AS dn, sum(duration_s::numeric) AS dt,
                   count(share) AS sn, sum(share::numeric) AS st
              FROM s
            UNION ALL
            SELECT cardinality(r.durations), r.duration_total, cardinality(r.shares), r.share_total
              FROM rolled r) x
), leavers AS (
    SELECT left_at, left_minute FROM s WHERE gave_up
    UNION ALL
    SELECT u.left_at, u.left_minute
      FROM rolled r CROSS JOIN LATERAL unnest(r.left_at, r.left_minute) AS u (left_at, left_minute)
), flagged AS (
    -- Sessions of the window with at least one incident, by their most serious one: read from
    -- the incidents (few) recorded since the window began (none is older than its session),
    -- by idx_test_session_incident_at, each joined to its session's start. Incidents are
    -- recorded after a session ends too, so they are never rolled up.
    SELECT count(*) AS sessions, coalesce(sum(f.n), 0)::bigint AS incidents,
           count(*) FILTER (WHERE f.worst = 1) AS low,
           count(*) FILTER (WHERE f.worst = 2) AS medium,
           count(*) FILTER (WHERE f.worst = 3) AS high
      FROM (SELECT i.candidate_id, count(*) AS n,
                   max(array_position(ARRAY['low', 'medium', 'high']::text[], i.severity::text))
                       AS worst
              FROM test_session_incident i
              JOIN test_session t ON t.candidate_id = i.candidate_id
             WHERE i.at >= %(since)s::timestamptz
               AND t.test_start_time >= %(since)s::timestamptz
               AND t.test_start_time < %(until)s::timestamptz
             GROUP BY i.candidate_id) f
), counts AS (
    SELECT coalesce(sum(sessions), 0)::bigint AS total,
           coalesce(sum(active), 0)::bigint AS active,
           coalesce(sum(completed), 0)::bigint AS completed,
           coalesce(sum(abandoned), 0)::bigint AS abandoned,
           coalesce(sum(completed + abandoned), 0)::bigint AS ended,
           coalesce(sum(overdue), 0)::bigint AS overdue,
           coalesce(sum(manual), 0)::bigint AS manual,
           coalesce(sum(timer_expired), 0)::bigint AS timer_expired,
           coalesce(sum(tab_close), 0)::bigint AS tab_close,
           coalesce(sum(admin), 0)::bigint AS admin,
           coalesce(sum(heartbeat_timeout), 0)::bigint AS heartbeat_timeout,
           coalesce(sum(admin_terminated), 0)::bigint AS admin_terminated,
           coalesce(sum(timer_abandoned), 0)::bigint AS timer_abandoned,
           coalesce(sum(paused), 0)::bigint AS paused,
           coalesce(sum(paused_now), 0)::bigint AS paused_now,
           coalesce(sum(reopened), 0)::bigint AS reopened,
           coalesce(sum(reopenings), 0)::bigint AS reopenings,
           coalesce(sum(gave_up), 0)::bigint AS gave_up,
           coalesce(sum(gave_up_focus), 0)::bigint AS gave_up_focus,
           coalesce(sum(devices_either), 0)::bigint AS devices_either,
           coalesce(sum(devices), 0)::bigint AS devices,
           coalesce(sum(addresses), 0)::bigint AS addresses
      FROM cells
), totals AS (
    SELECT k.*, coalesce(d.duration_n, 0) AS duration_n, d.duration_mean,
           (SELECT p FROM percentiles WHERE l = 0) AS duration_pct, d.share_mean,
           (SELECT p FROM percentiles WHERE l = 1) AS share_pct
      FROM counts k, means d
), by_duration AS (
    -- floor(seconds / (60 w)) is floor(floor(seconds / 60) / w): the buckets from the minutes.
    SELECT m / %(bucket)s::int AS b, sum(n) AS n
      FROM bins WHERE l = 0
     GROUP BY 1
), duration_histogram AS (
    SELECT coalesce(json_agg(json_build_object(
               'from_minute', gs.b * %(bucket)s::int, 'to_minute', (gs.b + 1) * %(bucket)s::int,
               'count', coalesce(c.n, 0)) ORDER BY gs.b), '[]'::json) AS j
      FROM generate_series(0, (SELECT max(b) FROM by_duration)) gs (b)
      LEFT JOIN by_duration c ON c.b = gs.b
), by_sections_all AS (
    SELECT k, sum(n)::bigint AS n, sum(gave_up)::bigint AS gave_up
      FROM (SELECT k, n, gave_up FROM raw_sections
            UNION ALL
            SELECT u.k, u.n, u.g
              FROM rolled r
             CROSS JOIN LATERAL unnest(r.sections, r.sections_n, r.sections_gave_up) AS u (k, n, g)) x
     GROUP BY k
), funnel AS (
    SELECT coalesce(json_agg(json_build_object(
               'sections', gs.k, 'reached', r.reached, 'count', r.n,
               'rate', round(r.n::numeric / nullif(r.reached, 0), 4)) ORDER BY gs.k), '[]'::json)
               AS j
      FROM generate_series(0, (SELECT max(k) FROM by_sections_all)) gs (k)
     CROSS JOIN LATERAL (
           SELECT coalesce(sum(p.n) FILTER (WHERE p.k >= gs.k), 0)::bigint AS reached,
                  coalesce(sum(p.gave_up) FILTER (WHERE p.k = gs.k), 0)::bigint AS n
             FROM by_sections_all p) r
), per_leaver AS (
    -- Those who gave up, by minute into the test, hour and weekday: one pass, three groupings.
    SELECT GROUPING(minute_b) = 0 AS by_minute, GROUPING(h) = 0 AS by_hour,
           GROUPING(d) = 0 AS by_weekday,
           minute_b, h, d, count(*) AS n
      FROM (SELECT left_minute / %(bucket)s::int AS minute_b,
                   date_part('hour', left_at AT TIME ZONE %(tz)s::text)::int AS h,
                   date_part('isodow', left_at AT TIME ZONE %(tz)s::text)::int AS d
              FROM leavers) y
     GROUP BY GROUPING SETS ((minute_b), (h), (d))
), by_minute AS (
    SELECT coalesce(json_agg(json_build_object(
               'from_minute', gs.b * %(bucket)s::int, 'to_minute', (gs.b + 1) * %(bucket)s::int,
               'count', coalesce(c.n, 0)) ORDER BY gs.b), '[]'::json) AS j
      FROM generate_series(0, (SELECT max(minute_b) FROM per_leaver WHERE by_minute)) gs (b)
      LEFT JOIN per_leaver c ON c.by_minute AND c.minute_b = gs.b
), by_hour AS (
    SELECT json_agg(json_build_object('hour', gs.h, 'count', coalesce(c.n, 0)) ORDER BY gs.h) AS j
      FROM generate_series(0, 23) gs (h)
      LEFT JOIN per_leaver c ON c.by_hour AND c.h = gs.h
), by_weekday AS (
    SELECT json_agg(json_build_object(
               'weekday', gs.d,
               'name', (ARRAY['Mon', 'Tue', 'Wed', 'Thu', 'Fri', 'Sat', 'Sun'])[gs.d],
               'count', coalesce(c.n, 0)) ORDER BY gs.d) AS j
      FROM generate_series(1, 7) gs (d)
      LEFT JOIN per_leaver c ON c.by_weekday AND c.d = gs.d
), per_day AS (
    SELECT day, sum(sessions) AS n, sum(completed) AS completed, sum(abandoned) AS abandoned,
           sum(active) AS active
      FROM cells GROUP BY day
), days AS (
    SELECT (%(since)s::timestamptz AT TIME ZONE %(tz)s::text)::date AS first_day,
           ((%(until)s::timestamptz - interval '1 microsecond') AT TIME ZONE %(tz)s::text)::date
               AS last_day
     WHERE %(since)s::timestamptz < %(until)s::timestamptz
), daily AS (
    SELECT coalesce(json_agg(json_build_object(
               'date', x.day, 'started', coalesce(c.n, 0),
               'completed', coalesce(c.completed, 0), 'abandoned', coalesce(c.abandoned, 0),
               'active', coalesce(c.active, 0)) ORDER BY x.day), '[]'::json) AS j
      FROM days
     CROSS JOIN generate_series(0, days.last_day - days.first_day) i
     CROSS JOIN LATERAL (SELECT days.first_day + i AS day) x
      LEFT JOIN per_day c ON c.day = x.day
)
SELECT json_build_object(
    'window', json_build_object('since', %(since)s::timestamptz, 'until', %(until)s::timestamptz,
                                'timezone', %(tz)s::text),
    'generated_at', now(),
    'total', t.total,
    'active', t.active,
    'completed', t.completed,
    'abandoned', t.abandoned,
    'overdue_unswept', t.overdue,
    'completion_rate', round(t.completed::numeric / nullif(t.ended, 0), 4),
    'by_method', json_build_object(
        'manual', json_build_object('status', test_session_status_of('manual'), 'count', t.manual,
                                    'rate', round(t.manual::numeric / nullif(t.ended, 0), 4)),
        'timer_expired', json_build_object('status', test_session_status_of('timer_expired'), 'count', t.timer_expired,
                                    'rate', round(t.timer_expired::numeric / nullif(t.ended, 0), 4)),
        'tab_close', json_build_object('status', test_session_status_of('tab_close'), 'count', t.tab_close,
                                    'rate', round(t.tab_close::numeric / nullif(t.ended, 0), 4)),
        'admin', json_build_object('status', test_session_status_of('admin'), 'count', t.admin,
                                    'rate', round(t.admin::numeric / nullif(t.ended, 0), 4)),
        'heartbeat_timeout', json_build_object('status', test_session_status_of('heartbeat_timeout'), 'count', t.heartbeat_timeout,
                                    'rate', round(t.heartbeat_timeout::numeric / nullif(t.ended, 0), 4)),
        'admin_terminated', json_build_object('status', test_session_status_of('admin_terminated'), 'count', t.admin_terminated,
                                    'rate', round(t.admin_terminated::numeric / nullif(t.ended, 0), 4)),
        'timer_abandoned', json_build_object('status', test_session_status_of('timer_abandoned'), 'count', t.timer_abandoned,
                                    'rate', round(t.timer_abandoned::numeric / nullif(t.ended, 0), 4))),
    'paused', json_build_object('sessions', t.paused, 'now', t.paused_now),
    'reopened', json_build_object('sessions', t.reopened, 'reopenings', t.reopenings),
    'duration_seconds', json_build_object(
        'count', t.duration_n,
        'mean', round(t.duration_mean::numeric, 1),
        'median', round(t.duration_pct[1]::numeric, 1),
        'p90', round(t.duration_pct[2]::numeric, 1)),
    'duration_share', json_build_object(
        'mean', round(t.share_mean::numeric, 4),
        'median', round(t.share_pct[1]::numeric, 4),
        'p90', round(t.share_pct[2]::numeric, 4)),
    'duration_histogram', dh.j,
    'abandonment', json_build_object(
        'total', t.gave_up,
        'share_of_ended', round(t.gave_up::numeric / nullif(t.ended, 0), 4),
        'by_reason', json_build_object('heartbeat_timeout', t.heartbeat_timeout,
                                       'tab_close', t.tab_close,
                                       'admin_terminated', t.admin_terminated),
        'by_sections_completed', fu.j,
        'by_minute', bm.j,
        'by_hour', bh.j,
        'by_weekday', bw.j,
        'focus_lost_before', json_build_object(
            'count', t.gave_up_focus,
            'share', round(t.gave_up_focus::numeric / nullif(t.gave_up, 0), 4))),
    'flagged', json_build_object(
        'total', fl.sessions,
        'share', round(fl.sessions::numeric / nullif(t.total, 0), 4),
        'incidents', fl.incidents,
        'by_severity', json_build_object('low', fl.low, 'medium', fl.medium, 'high', fl.high)),
    'daily', dl.j,
    'multiple_devices', json_build_object(
        'sessions', t.devices_either,
        'share', round(t.devices_either::numeric / nullif(t.total, 0), 4),
        'devices', t.devices,
        'addresses', t.addresses)
) AS summary
  FROM totals t, duration_histogram dh, funnel fu, by_minute bm, by_hour bh, by_weekday bw,
       flagged fl, daily dl;


-- rollup_due --
-- The quarter hours the sweeper rolls up next, at most %(limit)s: first those never rolled up
-- (after the newest row, from the oldest session on a first run, until an hour ago), then the
-- stale ones, the least recently tried first, tried again after 5 minutes.
SELECT bucket
  FROM generate_series(
           coalesce((SELECT max(r.bucket) FROM test_session_rollup r) + interval '15 minutes',
                    (SELECT test_session_rollup_bucket(min(t.test_start_time)) FROM test_session t)),
           now() - interval '75 minutes', interval '15 minutes') AS g (bucket)
UNION ALL
(SELECT r.bucket
   FROM test_session_rollup r
  WHERE NOT r.ready AND r.rolled_at < now() - interval '5 minutes'
  ORDER BY r.rolled_at
  LIMIT %(limit)s)
LIMIT %(limit)s;

-- rollup_lock --
-- The sweeper's hold on a quarter hour while it rolls it up, so writers of its sessions wait
-- (migration 0014); false when a writer holds it now: the sweeper never waits, it skips.
SELECT pg_try_advisory_xact_lock_shared(x'726f6c6c'::integer, -1)
       AND pg_try_advisory_xact_lock(x'726f6c6c'::integer,
                                     test_session_rollup_lock_key(%(bucket)s::timestamptz))
       AS locked;

-- rollup_build --
-- A quarter hour's row: its sessions' cell (in UTC, so one), ready when every one has ended.
WITH
-- include: _raw_cells
INSERT INTO test_session_rollup AS r (bucket, ready, rolled_at,
                                      sessions, completed, abandoned, manual, timer_expired,
                                      tab_close, admin, heartbeat_timeout, admin_terminated,
                                      timer_abandoned, paused, reopened, reopenings, gave_up,
                                      gave_up_focus, devices_either, devices, addresses,
                                      durations, duration_minute, duration_minute_n,
                                      duration_total, shares, share_bin, share_bin_n,
                                      share_total, sections, sections_n, sections_gave_up,
                                      left_at, left_minute)
SELECT %(bucket)s::timestamptz, coalesce(c.active + c.overdue, 0) = 0, now(),
       coalesce(c.sessions, 0), coalesce(c.completed, 0), coalesce(c.abandoned, 0),
       coalesce(c.manual, 0), coalesce(c.timer_expired, 0), coalesce(c.tab_close, 0),
       coalesce(c.admin, 0), coalesce(c.heartbeat_timeout, 0), coalesce(c.admin_terminated, 0),
       coalesce(c.timer_abandoned, 0), coalesce(c.paused, 0), coalesce(c.reopened, 0),
       coalesce(c.reopenings, 0), coalesce(c.gave_up, 0), coalesce(c.gave_up_focus, 0),
       coalesce(c.devices_either, 0), coalesce(c.devices, 0), coalesce(c.addresses, 0),
       -- the lists: in step, as one aggregate node feeds its aggregates the same rows
       d.durations, m.duration_minute, m.duration_minute_n, d.duration_total, h.shares,
       b.share_bin, b.share_bin_n, h.share_total, k.sections, k.sections_n, k.sections_gave_up,
       l.left_at, l.left_minute
  FROM (SELECT) AS one
  LEFT JOIN raw_cells c ON true
 CROSS JOIN (SELECT coalesce(array_agg(duration_s ORDER BY duration_s), '{}') AS durations,
                    coalesce(sum(duration_s::numeric), 0) AS duration_total
               FROM s WHERE duration_s IS NOT NULL) d
 CROSS JOIN (SELECT coalesce(array_agg(share ORDER BY share), '{}') AS shares,
                    coalesce(sum(share::numeric), 0) AS share_total
               FROM s WHERE share IS NOT NULL) h
 CROSS JOIN (SELECT coalesce(array_agg(m ORDER BY m), '{}') AS share_bin,
                    coalesce(array_agg(n ORDER BY m), '{}') AS share_bin_n
               FROM raw_share_bins) b
 CROSS JOIN (SELECT coalesce(array_agg(m ORDER BY m), '{}') AS duration_minute,
                    coalesce(array_agg(n ORDER BY m), '{}') AS duration_minute_n
               FROM raw_minutes) m
 CROSS JOIN (SELECT coalesce(array_agg(k ORDER BY k), '{}') AS sections,
                    coalesce(array_agg(n ORDER BY k), '{}') AS sections_n,
                    coalesce(array_agg(gave_up ORDER BY k), '{}') AS sections_gave_up
               FROM raw_sections) k
 CROSS JOIN (SELECT coalesce(array_agg(left_at), '{}') AS left_at,
                    coalesce(array_agg(left_minute), '{}') AS left_minute
               FROM s WHERE gave_up) l
    ON CONFLICT (bucket) DO UPDATE
   SET ready = excluded.ready, rolled_at = excluded.rolled_at,
       sessions = excluded.sessions, completed = excluded.completed,
       abandoned = excluded.abandoned, manual = excluded.manual,
       timer_expired = excluded.timer_expired, tab_close = excluded.tab_close,
       admin = excluded.admin, heartbeat_timeout = excluded.heartbeat_timeout,
       admin_terminated = excluded.admin_terminated, timer_abandoned = excluded.timer_abandoned,
       paused = excluded.paused, reopened = excluded.reopened, reopenings = excluded.reopenings,
       gave_up = excluded.gave_up, gave_up_focus = excluded.gave_up_focus,
       devices_either = excluded.devices_either, devices = excluded.devices,
       addresses = excluded.addresses, durations = excluded.durations,
       duration_minute = excluded.duration_minute, duration_minute_n = excluded.duration_minute_n,
       duration_total = excluded.duration_total, shares = excluded.shares,
       share_bin = excluded.share_bin, share_bin_n = excluded.share_bin_n,
       share_total = excluded.share_total,
       sections = excluded.sections, sections_n = excluded.sections_n,
       sections_gave_up = excluded.sections_gave_up, left_at = excluded.left_at,
       left_minute = excluded.left_minute
RETURNING r.ready;

-- live --
-- Running sessions (active and not yet due), with time left and silence; the silent first.
WITH live AS MATERIALIZED (
    SELECT t.candidate_id::text AS candidate_id,
           t.test_start_time,
           t.deadline,
           t.last_heartbeat,
           -- a paused clock stands still: what was left at the pause
           greatest(floor(date_part('epoch', t.deadline - coalesce(t.paused_at, now()))), 0)::bigint
               AS remaining_seconds,
           t.paused_at IS NOT NULL AS paused,
           floor(date_part('epoch', now() - coalesce(t.last_heartbeat, t.test_start_time)))::bigint
               AS seconds_since_heartbeat,
           now() - coalesce(t.last_heartbeat, t.test_start_time) > %(silent_after)s::interval AS silent,
           jsonb_array_length(t.sections_completed) AS sections_completed,
           t.tab_closed_at IS NOT NULL AS tab_closed,
           spread.devices, spread.addresses,
           spread.devices > 1 OR spread.addresses > 1 AS multiple_devices,
           coalesce(f.n, 0) AS incidents,
           (ARRAY['low', 'medium', 'high']::text[])[f.worst] AS flag
      FROM test_session t, invigilator_rules(%(policy)s::jsonb) AS c,
           -- test_session_page_spread(t.candidate_id), written out: on Citus a function that
           -- reads a table cannot run in a statement pushed down to a shard.
           LATERAL (SELECT count(DISTINCT coalesce(p.user_agent, ''))::integer AS devices,
                           count(DISTINCT coalesce(p.client_address, ''))::integer AS addresses
                      FROM test_session_page p
                     WHERE p.candidate_id = t.candidate_id) AS spread,
           -- one index probe per running session (idx_test_session_incident_session)
           LATERAL (SELECT count(*) AS n,
                           max(array_position(ARRAY['low', 'medium', 'high']::text[],
                                              i.severity::text)) AS worst
                      FROM test_session_incident i
                     WHERE i.candidate_id = t.candidate_id) AS f
     WHERE t.status = 'active'
       AND test_session_open(t.status, t.deadline, t.last_heartbeat, t.test_start_time,
                             t.tab_closed_at, t.paused_at, t.resumed_at, t.abandon_after_seconds,
                             t.tab_close, t.at_deadline, t.grace_seconds, t.time_multiplier, c)
)
SELECT json_build_object(
    'server_now', now(),
    'silent_after_seconds', date_part('epoch', %(silent_after)s::interval),
    'count', (SELECT count(*) FROM live),
    'silent', (SELECT count(*) FROM live WHERE silent),
    'flagged', (SELECT count(*) FROM live WHERE incidents > 0),
    'sessions', coalesce((
        SELECT json_agg(l ORDER BY l.silent DESC, l.seconds_since_heartbeat DESC, l.candidate_id)
          FROM (SELECT * FROM live
                 ORDER BY silent DESC, seconds_since_heartbeat DESC, candidate_id
                 LIMIT %(limit)s::int) l), '[]'::json)
) AS live;
