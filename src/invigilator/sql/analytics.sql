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

-- summary --
-- Every metric of the report as one JSON object, for the sessions that started in [since, until).
WITH stored AS (
    -- Ended rows as stored, and active ones as they truly are (lazy expiry): only the active
    -- rows, a small share, pay for the rules.
    SELECT t.candidate_id, t.test_start_time, t.deadline, t.sections_completed,
           t.status, t.completion_method AS method, t.completed_at AS ended_at,
           false AS overdue, t.last_heartbeat, t.paused_seconds, t.paused_at, t.pause_count,
           t.reopen_count, t.awaiting_candidate
      FROM test_session t
     WHERE t.test_start_time >= %(since)s::timestamptz
       AND t.test_start_time < %(until)s::timestamptz
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
     WHERE t.test_start_time >= %(since)s::timestamptz
       AND t.test_start_time < %(until)s::timestamptz
       AND t.status = 'active'
), s AS MATERIALIZED (
    -- One narrow row per session in the window: what every aggregate below reads (three
    -- passes in memory: the totals, the per-session breakdowns, the abandonment breakdowns).
    SELECT x.test_start_time AS started_at,
           -- The clock's time only: every second it stood still (pauses, a reopened
           -- session's wait and its time ended) is left out of both.
           date_part('epoch', x.deadline - x.test_start_time) - x.paused_seconds AS allowed_s,
           jsonb_array_length(x.sections_completed) AS sections,
           x.status, x.method, x.overdue,
           CASE WHEN x.status = 'completed'
                THEN greatest(date_part('epoch', x.ended_at - x.test_start_time)
                              - x.paused_seconds, 0) END
               AS duration_s,
           x.pause_count > 0 AS was_paused,
           -- paused by staff now (not a reopened session waiting for its page)
           x.status = 'active' AND x.paused_at IS NOT NULL AND NOT x.awaiting_candidate
               AS paused_now,
           x.reopen_count,
           test_session_gave_up(x.method) AS gave_up,
           -- When the candidate left: last heard of for a heartbeat timeout, else the end.
           CASE WHEN x.method = 'heartbeat_timeout'
                THEN least(coalesce(x.last_heartbeat, x.test_start_time), x.ended_at)
                WHEN x.method IN ('tab_close', 'admin_terminated') THEN x.ended_at END AS left_at,
           -- Who gave up, and when their session ended: `focus` probes the event log for them.
           CASE WHEN test_session_gave_up(x.method) THEN x.candidate_id END AS leaver_id,
           CASE WHEN test_session_gave_up(x.method) THEN x.ended_at END AS leaver_end
      FROM stored x
), spread AS (
    -- Sessions whose pages came from more than one device (user agent) or address
    -- (migration 0007): the window's sessions joined to their page claims by candidate_id,
    -- so the planner picks per window: a probe of the claims per session for a small window,
    -- one pass over the claims for a large one (a probe per session was 1.7 s of the summary
    -- at 1M sessions, BENCHMARKS.md §3). The window's rows are read again rather than from
    -- `stored`: Citus joins two tables on their distribution column on each shard, and
    -- cannot push a join with a CTE down. "More than one" is asked as "the least and the
    -- greatest differ": count(DISTINCT) sorts within every group.
    SELECT count(*) AS either,
           count(*) FILTER (WHERE y.devices) AS devices,
           count(*) FILTER (WHERE y.addresses) AS addresses
      FROM (SELECT min(coalesce(p.user_agent, '')) <> max(coalesce(p.user_agent, ''))
                       AS devices,
                   min(coalesce(p.client_address, '')) <> max(coalesce(p.client_address, ''))
                       AS addresses
              FROM test_session t
              JOIN test_session_page p ON p.candidate_id = t.candidate_id
             WHERE t.test_start_time >= %(since)s::timestamptz
               AND t.test_start_time < %(until)s::timestamptz
             GROUP BY t.candidate_id) y
     WHERE y.devices OR y.addresses
), focus AS (
    -- Those who gave up and lost focus (or hid the tab) before the end: one probe of the
    -- event log by candidate_id per such session (idx_test_session_event_focus). A join, not
    -- a correlated EXISTS: Citus joins the sessions to each shard's events, and refuses a
    -- correlated subquery here.
    SELECT count(DISTINCT s.leaver_id) AS n
      FROM s
      JOIN test_session_event e
        ON e.candidate_id = s.leaver_id
       AND e.type IN ('focus_lost', 'tab_hidden')
       AND e.at <= s.leaver_end
     WHERE s.leaver_id IS NOT NULL
), flagged AS (
    -- Sessions of the window with at least one incident, by their most serious one: read from
    -- the incidents (few) recorded since the window began (none is older than its session),
    -- by idx_test_session_incident_at, each joined to its session's start.
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
), totals AS (
    SELECT count(*) AS total,
           count(*) FILTER (WHERE status = 'active') AS active,
           count(*) FILTER (WHERE status = 'completed') AS completed,
           count(*) FILTER (WHERE status = 'abandoned') AS abandoned,
           count(*) FILTER (WHERE status <> 'active') AS ended,
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
           count(*) FILTER (WHERE gave_up) AS gave_up,
           (SELECT n FROM focus) AS gave_up_focus,
           count(duration_s) AS duration_n,
           avg(duration_s) AS duration_mean,
           percentile_cont(ARRAY[0.5, 0.9]) WITHIN GROUP (ORDER BY duration_s) AS duration_pct,
           avg(duration_s / nullif(allowed_s, 0)) AS share_mean,
           percentile_cont(ARRAY[0.5, 0.9])
               WITHIN GROUP (ORDER BY duration_s / nullif(allowed_s, 0)) AS share_pct
      FROM s
), per_session AS (
    -- By sections completed, by start day, by duration bucket: one pass over the sessions
    -- into their (sections, day, bucket) cells (one hash key per row, not three), then the
    -- three groupings over those few thousand cells.
    SELECT GROUPING(sections) = 0 AS by_sections, GROUPING(day) = 0 AS by_day,
           GROUPING(duration_b) = 0 AS by_duration,
           sections, day, duration_b,
           sum(n)::bigint AS n,
           sum(gave_up)::bigint AS gave_up,
           sum(completed)::bigint AS completed,
           sum(abandoned)::bigint AS abandoned,
           sum(active)::bigint AS active
      FROM (SELECT sections, day, duration_b,
                   count(*) AS n,
                   count(*) FILTER (WHERE gave_up) AS gave_up,
                   count(*) FILTER (WHERE status = 'completed') AS completed,
                   count(*) FILTER (WHERE status = 'abandoned') AS abandoned,
                   count(*) FILTER (WHERE status = 'active') AS active
              FROM (SELECT sections, gave_up, status,
                           (started_at AT TIME ZONE %(tz)s::text)::date AS day,
                           floor(duration_s / (%(bucket)s::int * 60))::int AS duration_b
                      FROM s) y
             GROUP BY sections, day, duration_b) cells
     GROUP BY GROUPING SETS ((sections), (day), (duration_b))
), per_leaver AS (
    -- Those who gave up, by minute into the test, hour and weekday: one pass, three groupings.
    SELECT GROUPING(minute_b) = 0 AS by_minute, GROUPING(h) = 0 AS by_hour,
           GROUPING(d) = 0 AS by_weekday,
           minute_b, h, d, count(*) AS n
      FROM (SELECT floor(greatest(date_part('epoch', left_at - started_at), 0)
                         / (%(bucket)s::int * 60))::int AS minute_b,
                   date_part('hour', left_at AT TIME ZONE %(tz)s::text)::int AS h,
                   date_part('isodow', left_at AT TIME ZONE %(tz)s::text)::int AS d
              FROM s WHERE gave_up) y
     GROUP BY GROUPING SETS ((minute_b), (h), (d))
), duration_histogram AS (
    SELECT coalesce(json_agg(json_build_object(
               'from_minute', gs.b * %(bucket)s::int, 'to_minute', (gs.b + 1) * %(bucket)s::int,
               'count', coalesce(c.n, 0)) ORDER BY gs.b), '[]'::json) AS j
      FROM generate_series(0, (SELECT max(duration_b) FROM per_session WHERE by_duration)) gs (b)
      LEFT JOIN per_session c ON c.by_duration AND c.duration_b = gs.b
), funnel AS (
    SELECT coalesce(json_agg(json_build_object(
               'sections', gs.k, 'reached', r.reached, 'count', r.n,
               'rate', round(r.n::numeric / nullif(r.reached, 0), 4)) ORDER BY gs.k), '[]'::json)
               AS j
      FROM generate_series(0, (SELECT max(sections) FROM per_session WHERE by_sections)) gs (k)
     CROSS JOIN LATERAL (
           SELECT coalesce(sum(p.n) FILTER (WHERE p.sections >= gs.k), 0)::bigint AS reached,
                  coalesce(sum(p.gave_up) FILTER (WHERE p.sections = gs.k), 0)::bigint AS n
             FROM per_session p WHERE p.by_sections) r
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
      LEFT JOIN per_session c ON c.by_day AND c.day = x.day
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
        'sessions', sp.either,
        'share', round(sp.either::numeric / nullif(t.total, 0), 4),
        'devices', sp.devices,
        'addresses', sp.addresses)
) AS summary
  FROM totals t, duration_histogram dh, funnel fu, by_minute bm, by_hour bh, by_weekday bw,
       flagged fl, daily dl, spread sp;

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
