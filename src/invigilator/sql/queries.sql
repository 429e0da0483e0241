-- The named queries of the session store. Each block: a `-- name --` header, a one-line
-- description, then one statement. The rules are SQL functions (migration 0003), given the
-- statement's context `c`: its clock (`c.at`, the database's now()) and the deployment's
-- policy, read once in the FROM list, by invigilator_act(actor, policy, reason) for a change
-- (which also names who acts, for the timeline) or invigilator_rules(policy) for a read; each
-- rule also takes the session's own policy and pause columns, always the same ones in the same
-- order (migration 0008). Every write to a running session is guarded by
-- test_session_open(..., c), and an answer by test_session_takes_answers(..., c). The timeline
-- is written by the trigger test_session_timeline, never here. A guarded write that matches no row is explained by the
-- store: `finalize` (lazy expiry) then `get_session`.

-- start_session --
-- Create an active session with its own policy, accommodations and page policy; returns
-- nothing when the candidate already has one.
INSERT INTO test_session (candidate_id, test_start_time, test_duration_minutes, planned_sections,
                          pages, abandon_after_seconds, tab_close, at_deadline, grace_seconds,
                          time_multiplier, accommodation_minutes)
SELECT %(candidate_id)s, c.at, %(duration_minutes)s, %(planned_sections)s, %(pages)s,
       %(abandon_after_seconds)s, %(tab_close)s, %(at_deadline)s, %(grace_seconds)s,
       %(time_multiplier)s, %(accommodation_minutes)s
  FROM invigilator_act(%(actor)s, %(policy)s::jsonb) AS c
    ON CONFLICT (candidate_id) DO NOTHING
-- the statement's clock (c.at): on Citus a now() here would be the worker's
RETURNING *, test_start_time AS server_now;

-- create_candidate --
-- Create a minimal candidate row for a host app that has none (an explicit option).
INSERT INTO candidate (candidate_id) VALUES (%(candidate_id)s) ON CONFLICT DO NOTHING;

-- get_session --
-- One session as stored, with every committed answer (from its rows) and the database clock.
-- The answers as test_session_answers() has them, written out as a join: on Citus a function
-- that reads a table cannot run inside a statement pushed down to a shard.
SELECT t.*, a.answers, a.seqs, now() AS server_now
  FROM test_session t
 CROSS JOIN LATERAL (
           SELECT coalesce(jsonb_object_agg(x.question, x.value), '{}'::jsonb) AS answers,
                  coalesce(jsonb_object_agg(x.question, x.seq), '{}'::jsonb) AS seqs
             FROM test_session_answer x
            WHERE x.candidate_id = t.candidate_id) AS a
 WHERE t.candidate_id = %(candidate_id)s;

-- heartbeat_batch --
-- Heartbeats for many sessions in one statement (the hot path; a single heartbeat is a batch
-- of one): stamp last_heartbeat (and last_activity when the candidate acted) and clear a
-- pending tab close. Sessions not returned were refused (ended, due or unknown). The caller
-- sends the ids sorted, so concurrent batches lock shared rows in the same order. A reopened
-- session waiting for its page is returned with `awaiting_candidate`: start_reopened_clock
-- then starts its clock (rare, so the hot statement names no column with a trigger).
UPDATE test_session t
   SET last_heartbeat = c.at,
       last_activity = CASE WHEN b.active THEN c.at ELSE t.last_activity END,
       tab_closed_at = NULL
  FROM unnest(%(candidate_ids)s, %(active)s::boolean[]) AS b (candidate_id, active),
       invigilator_act('candidate', %(policy)s::jsonb) AS c
 WHERE t.candidate_id = b.candidate_id
   AND test_session_open(t.status, t.deadline, t.last_heartbeat, t.test_start_time,
                         t.tab_closed_at, t.paused_at, t.resumed_at, t.abandon_after_seconds,
                         t.tab_close, t.at_deadline, t.grace_seconds, t.time_multiplier, c)
RETURNING t.candidate_id, t.status, t.deadline, t.paused_at, t.awaiting_candidate,
          c.at AS server_now;

-- start_reopened_clock --
-- A reopened session's page is heard from: its clock starts now, with the minutes it was
-- reopened with (the wait counts as paused time).
UPDATE test_session t
   SET paused_seconds = t.paused_seconds + extract(epoch FROM c.at - t.paused_at),
       paused_at = NULL,
       awaiting_candidate = false,
       resumed_at = c.at
  FROM invigilator_act('candidate', %(policy)s::jsonb) AS c
 WHERE t.candidate_id = ANY (%(candidate_ids)s)
   AND t.awaiting_candidate
RETURNING t.candidate_id, t.status, t.deadline, t.paused_at, c.at AS server_now;

-- record_activity --
-- The candidate typed, clicked or scrolled.
UPDATE test_session t
   SET last_activity = c.at
  FROM invigilator_act('candidate', %(policy)s::jsonb) AS c
 WHERE t.candidate_id = %(candidate_id)s
   AND test_session_open(t.status, t.deadline, t.last_heartbeat, t.test_start_time,
                         t.tab_closed_at, t.paused_at, t.resumed_at, t.abandon_after_seconds,
                         t.tab_close, t.at_deadline, t.grace_seconds, t.time_multiplier, c)
   AND test_session_page_may_write(t.pages, t.page_id, %(page_id)s)
RETURNING t.*, c.at AS server_now;

-- complete_section --
-- Append a section to sections_completed unless it is there already (set semantics, order
-- kept); a section outside the planned list (when there is one) is not taken.
UPDATE test_session t
   SET sections_completed = t.sections_completed || jsonb_build_array(%(section)s::text),
       last_activity = c.at
  FROM invigilator_act('candidate', %(policy)s::jsonb) AS c
 WHERE t.candidate_id = %(candidate_id)s
   AND NOT t.sections_completed @> jsonb_build_array(%(section)s::text)
   AND (t.planned_sections IS NULL OR t.planned_sections @> jsonb_build_array(%(section)s::text))
   AND test_session_takes_answers(t.status, t.deadline, t.last_heartbeat, t.test_start_time,
                                  t.tab_closed_at, t.paused_at, t.resumed_at,
                                  t.abandon_after_seconds, t.tab_close, t.at_deadline,
                                  t.grace_seconds, t.time_multiplier, c)
   AND test_session_page_may_write(t.pages, t.page_id, %(page_id)s)
RETURNING t.*, c.at AS server_now;

-- _answer_writes --
-- What save_answers and save_answers_distributed do once their `session` CTE has read the
-- session (included after it): the rows, the running total, the mirror's to-do, the page's
-- last_seen, the first answers' event, and the result.
), saved AS (
    INSERT INTO test_session_answer AS a (candidate_id, question, value, seq, bytes, bytes_added,
                                          saved_at)
    SELECT s.candidate_id, n.question, n.value, %(seq)s::bigint, n.bytes,
           n.bytes + octet_length(n.question), s.at
      FROM session s,
           LATERAL (SELECT e.key AS question, e.value, octet_length(e.value::text) AS bytes
                      FROM jsonb_each(%(answers)s::jsonb) AS e) AS n
        ON CONFLICT (candidate_id, question) DO UPDATE
       SET value = excluded.value, seq = excluded.seq, bytes = excluded.bytes,
           bytes_added = excluded.bytes - a.bytes, saved_at = excluded.saved_at
     WHERE a.seq <= excluded.seq
    -- first: bytes_added is the size of the answer and its question only for a new row (an
    -- update would need a replaced answer of negative size)
    RETURNING a.question, a.bytes_added, a.bytes_added = a.bytes + octet_length(a.question) AS first
), total AS (
    INSERT INTO test_session_answer_total AS x (candidate_id, bytes)
    SELECT s.candidate_id, (SELECT coalesce(sum(d.bytes_added), 0) FROM saved d)
      FROM session s
        ON CONFLICT (candidate_id) DO UPDATE SET bytes = x.bytes + excluded.bytes
    RETURNING x.bytes
), unsynced AS (
    INSERT INTO test_session_answer_unsynced (candidate_id, since)
    SELECT s.candidate_id, s.at FROM session s
        ON CONFLICT (candidate_id) DO NOTHING
), seen AS (
    -- To the minute: a coding test's page saves every few seconds, and rewriting its claim's
    -- row each time made a page's save cost about a quarter more than one without a page.
    -- (The age as a difference of timestamps: Citus refuses `timestamptz - interval`, a
    -- STABLE function, over a column in an UPDATE.)
    UPDATE test_session_page p SET last_seen = s.at
      FROM session s
     WHERE p.candidate_id = s.candidate_id AND p.page_id = %(page_id)s
       AND s.at - p.last_seen >= interval '1 minute'
), event AS (
    INSERT INTO test_session_event (candidate_id, type, actor, detail)
    SELECT s.candidate_id, 'answers_saved', 'candidate',
           jsonb_build_object('questions', q.questions, 'seq', %(seq)s::bigint)
      FROM session s,
           (SELECT jsonb_agg(x.question ORDER BY x.question) AS questions
              FROM saved x WHERE x.first) AS q
     WHERE q.questions IS NOT NULL
)
SELECT s.candidate_id, s.status, s.deadline, s.paused_at, s.at AS server_now,
       (SELECT CASE WHEN x.bytes > %(max_total_bytes)s::bigint
                    THEN test_session_answers_too_large(x.bytes, %(max_total_bytes)s::bigint)
                    ELSE x.bytes END
          FROM total x) AS total_bytes,
       coalesce((SELECT array_agg(x.question) FROM saved x), '{}') AS applied
  FROM session s;

-- save_answers --
-- Upsert one row per question (migration 0006): a question keeps the value of the highest `seq`
-- saved for it, and `seq` is the time the edit was made (docs/schema.md): an older edit never
-- overwrites a newer one, whenever it arrives; the same seq again is a harmless retry. The guard
-- locks the session's row (FOR SHARE: saves go side by side, an end or a page claim waits for
-- them and a save waits for those), so no save lands after the session ended, and none from a
-- page a newer one took over from (test_session_page_may_write); the row itself is not
-- rewritten (heartbeats keep last_activity). The page's claim is seen now. The per-session
-- limit: each row written says what it added to the session's total (bytes_added, migration
-- 0011), and the total moves by their sum on its latest version, so it stays exact when saves
-- of one session race; a total over the limit raises test_session_answers_too_large, which
-- undoes every write of the statement (autocommit: nothing commits). Every session with answer
-- rows has its total (migrations 0010, 0011; this statement writes both). The session joins
-- the list whose pending_answers mirror the sweeper refreshes. The timeline gets
-- `answers_saved` only for the questions this save answered for the first time: an edit of an
-- answer already saved writes no event (a coding test saves every few seconds; the rows keep
-- each answer's latest saved_at). Returns the questions this save applied.
WITH session AS (
    SELECT t.candidate_id, t.status, t.deadline, t.paused_at, c.at
      FROM test_session t, invigilator_rules(%(policy)s::jsonb) AS c
     WHERE t.candidate_id = %(candidate_id)s
       AND test_session_takes_answers(t.status, t.deadline, t.last_heartbeat,
                                      t.test_start_time, t.tab_closed_at, t.paused_at,
                                      t.resumed_at, t.abandon_after_seconds, t.tab_close,
                                      t.at_deadline, t.grace_seconds, t.time_multiplier, c)
       AND test_session_page_may_write(t.pages, t.page_id, %(page_id)s)
       FOR SHARE OF t
-- include: _answer_writes

-- save_answers_distributed --
-- save_answers for a distributed database (Citus), the same save with the rules as an argument
-- rather than a FROM item: Citus cannot take a function in FROM into a locking CTE that a
-- write reads ("missing data for column"; the clock is now(), as in invigilator_rules). Not on
-- one server: there the rules inline only over a FROM item, and the argument form cost about
-- twice the save's backend CPU. Citus runs it as about ten steps, each on a snapshot of its
-- own; the total still moves by what each row says it added, on its latest version.
WITH session AS (
    SELECT t.candidate_id, t.status, t.deadline, t.paused_at, now() AS at
      FROM test_session t
     WHERE t.candidate_id = %(candidate_id)s
       AND test_session_takes_answers(t.status, t.deadline, t.last_heartbeat,
                                      t.test_start_time, t.tab_closed_at, t.paused_at,
                                      t.resumed_at, t.abandon_after_seconds, t.tab_close,
                                      t.at_deadline, t.grace_seconds, t.time_multiplier,
                                      invigilator_rules(%(policy)s::jsonb))
       AND test_session_page_may_write(t.pages, t.page_id, %(page_id)s)
       FOR SHARE OF t
-- include: _answer_writes

-- current_answers --
-- What the server holds for these questions (value and seq): a save that was superseded tells
-- its page the newer answer, which the page then shows.
SELECT a.question, a.value, a.seq
  FROM test_session_answer a
 WHERE a.candidate_id = %(candidate_id)s AND a.question = ANY (%(questions)s::text[]);

-- claim_page --
-- A page opens the session: its claim is recorded (device, address, first and last seen) and
-- becomes the session's newest (test_session.page_id); with the policy `single` every other
-- page of the session is superseded from now on. The timeline gets `page_opened`, and
-- `page_superseded` for each page taken over from. Locks the row like a change of the session,
-- so a claim waits for saves in flight and a save after it sees it.
WITH claimed AS (
    UPDATE test_session t
       SET page_id = %(page_id)s
      FROM invigilator_act('candidate', %(policy)s::jsonb) AS c
     WHERE t.candidate_id = %(candidate_id)s
       AND test_session_open(t.status, t.deadline, t.last_heartbeat, t.test_start_time,
                             t.tab_closed_at, t.paused_at, t.resumed_at, t.abandon_after_seconds,
                             t.tab_close, t.at_deadline, t.grace_seconds, t.time_multiplier, c)
    RETURNING t.candidate_id, t.pages, c.at
), page AS (
    INSERT INTO test_session_page AS p (candidate_id, page_id, user_agent, client_address,
                                        first_seen, last_seen)
    SELECT s.candidate_id, %(page_id)s, %(user_agent)s, %(client_address)s, s.at, s.at
      FROM claimed s
        ON CONFLICT (candidate_id, page_id) DO UPDATE
       SET user_agent = excluded.user_agent, client_address = excluded.client_address,
           last_seen = excluded.last_seen, superseded_at = NULL
    RETURNING p.page_id
), superseded AS (
    UPDATE test_session_page p SET superseded_at = s.at
      FROM claimed s
     WHERE p.candidate_id = s.candidate_id AND s.pages = 'single'
       AND p.page_id <> %(page_id)s AND p.superseded_at IS NULL
    RETURNING p.page_id, p.user_agent, p.client_address
), event AS (
    INSERT INTO test_session_event (candidate_id, type, actor, detail)
    SELECT s.candidate_id, e.type, 'candidate', e.detail
      FROM claimed s,
           LATERAL (SELECT 1 AS n, 'page_opened' AS type,
                           jsonb_build_object('page_id', %(page_id)s::text, 'pages', s.pages,
                                              'user_agent', %(user_agent)s::text,
                                              'address', %(client_address)s::text) AS detail
                    UNION ALL
                    SELECT 2, 'page_superseded',
                           jsonb_build_object('page_id', x.page_id, 'user_agent', x.user_agent,
                                              'address', x.client_address,
                                              'by_page_id', %(page_id)s::text)
                      FROM superseded x) AS e
     ORDER BY e.n
)
SELECT s.candidate_id, s.pages, (SELECT count(*) FROM superseded) AS superseded
  FROM claimed s;

-- sync_answers --
-- Refresh the guide's pending_answers (and answer_seq) from the rows, for these sessions: at a
-- session's end, and for the sweeper's batch of sessions whose rows changed since.
-- The rows are aggregated in FROM, not by test_session_answers(): Citus refuses a STABLE
-- function over a column in an UPDATE.
WITH synced AS (
    DELETE FROM test_session_answer_unsynced u WHERE u.candidate_id = ANY (%(candidate_ids)s)
)
UPDATE test_session t
   SET pending_answers = coalesce(a.answers, '{}'::jsonb),
       answer_seq = coalesce(a.seqs, '{}'::jsonb)
  FROM test_session s
  LEFT JOIN (SELECT x.candidate_id, jsonb_object_agg(x.question, x.value) AS answers,
                    jsonb_object_agg(x.question, x.seq) AS seqs
               FROM test_session_answer x
              WHERE x.candidate_id = ANY (%(candidate_ids)s)
              GROUP BY x.candidate_id) AS a ON a.candidate_id = s.candidate_id
 WHERE t.candidate_id = ANY (%(candidate_ids)s)
   AND s.candidate_id = t.candidate_id;

-- find_unsynced --
-- The sessions whose pending_answers has lagged their rows for at least `delay`, oldest first,
-- skipping those another sweeper is refreshing and those with a save in flight. The session's
-- row is locked as a change of it is, until the refresh commits: a save waits for it, and the
-- refresh's own statement, which starts after the lock is held, sees every save committed
-- before. (A save holds the row FOR SHARE until it commits; a refresh that read the rows
-- while one was in flight would copy them without it and take the session off the list.)
SELECT u.candidate_id
  FROM test_session_answer_unsynced u
  JOIN test_session t ON t.candidate_id = u.candidate_id
 WHERE u.since <= now() - %(delay)s::interval
 ORDER BY u.since
 LIMIT %(limit)s
   FOR UPDATE OF u SKIP LOCKED
   FOR NO KEY UPDATE OF t SKIP LOCKED;

-- find_unsynced_unlocked --
-- find_unsynced without the locks, for a distributed database (Citus refuses FOR UPDATE across
-- shards): two sweepers may refresh the same session, which is harmless (sync_answers copies).
-- The session's row is then locked by lock_for_sync, one session at a time.
SELECT u.candidate_id
  FROM test_session_answer_unsynced u
 WHERE u.since <= now() - %(delay)s::interval
 ORDER BY u.since
 LIMIT %(limit)s;

-- lock_for_sync --
-- On a distributed database, find_unsynced_unlocked's pick: its session's row locked as a
-- change of it is (a statement routed to one shard may), waiting for the saves in flight.
SELECT t.candidate_id
  FROM test_session t
 WHERE t.candidate_id = %(candidate_id)s
   FOR NO KEY UPDATE OF t;

-- record_tab_close --
-- The tab is closing (a beacon): start the tab-close grace.
UPDATE test_session t
   SET tab_closed_at = c.at
  FROM invigilator_act('candidate', %(policy)s::jsonb) AS c
 WHERE t.candidate_id = %(candidate_id)s
   AND test_session_open(t.status, t.deadline, t.last_heartbeat, t.test_start_time,
                         t.tab_closed_at, t.paused_at, t.resumed_at, t.abandon_after_seconds,
                         t.tab_close, t.at_deadline, t.grace_seconds, t.time_multiplier, c)
   AND test_session_page_may_write(t.pages, t.page_id, %(page_id)s)
RETURNING t.*, c.at AS server_now;

-- record_client_event --
-- A browser-reported event (focus lost/regained, tab hidden/visible) on an open session: the
-- one kind of event that is not a change of the row, so it is written here.
INSERT INTO test_session_event (candidate_id, type, actor, detail)
SELECT t.candidate_id, %(type)s, 'candidate', %(detail)s::jsonb
  FROM test_session t, invigilator_rules(%(policy)s::jsonb) AS c
 WHERE t.candidate_id = %(candidate_id)s
   AND test_session_open(t.status, t.deadline, t.last_heartbeat, t.test_start_time,
                         t.tab_closed_at, t.paused_at, t.resumed_at, t.abandon_after_seconds,
                         t.tab_close, t.at_deadline, t.grace_seconds, t.time_multiplier, c)
   AND test_session_page_may_write(t.pages, t.page_id, %(page_id)s)
RETURNING candidate_id, now() AS server_now;

-- extend_time --
-- Give an open session extra minutes; the stored deadline moves with them (trigger).
UPDATE test_session t
   SET extra_minutes = t.extra_minutes + %(minutes)s::integer
  FROM invigilator_act(%(actor)s, %(policy)s::jsonb, %(reason)s) AS c
 WHERE t.candidate_id = %(candidate_id)s
   AND test_session_open(t.status, t.deadline, t.last_heartbeat, t.test_start_time,
                         t.tab_closed_at, t.paused_at, t.resumed_at, t.abandon_after_seconds,
                         t.tab_close, t.at_deadline, t.grace_seconds, t.time_multiplier, c)
RETURNING t.*, c.at AS server_now;

-- complete --
-- End an open session now with `method` (the candidate submits, or staff end it); the status
-- is the one the method leads to. The first ending wins and is never moved. A page that
-- submits is the claim on record afterwards (what tells that page "submitted by you"). A pause
-- still running ends with it (its time counts as paused). A reopened session still waiting for
-- its page takes no submit from the candidate: that is the earlier opening's repeat.
UPDATE test_session t
   SET status = test_session_status_of(%(method)s),
       completion_method = %(method)s,
       completed_at = c.at,
       tab_closed_at = NULL,
       page_id = coalesce(%(page_id)s, t.page_id),
       paused_seconds = t.paused_seconds
                        + coalesce(extract(epoch FROM c.at - t.paused_at), 0),
       paused_at = NULL,
       awaiting_candidate = false
  FROM invigilator_act(%(actor)s, %(policy)s::jsonb, %(reason)s) AS c
 WHERE t.candidate_id = %(candidate_id)s
   AND NOT (t.awaiting_candidate AND %(by_candidate)s::boolean)
   AND test_session_open(t.status, t.deadline, t.last_heartbeat, t.test_start_time,
                         t.tab_closed_at, t.paused_at, t.resumed_at, t.abandon_after_seconds,
                         t.tab_close, t.at_deadline, t.grace_seconds, t.time_multiplier, c)
   AND test_session_page_may_write(t.pages, t.page_id, %(page_id)s)
RETURNING t.*, c.at AS server_now;

-- pause --
-- Stop an open session's clock: no ending rule fires until it is resumed; its page still
-- beats and saves what was typed.
UPDATE test_session t
   SET paused_at = c.at,
       pause_count = t.pause_count + 1
  FROM invigilator_act(%(actor)s, %(policy)s::jsonb, %(reason)s) AS c
 WHERE t.candidate_id = %(candidate_id)s
   AND t.paused_at IS NULL
   AND test_session_open(t.status, t.deadline, t.last_heartbeat, t.test_start_time,
                         t.tab_closed_at, t.paused_at, t.resumed_at, t.abandon_after_seconds,
                         t.tab_close, t.at_deadline, t.grace_seconds, t.time_multiplier, c)
RETURNING t.*, c.at AS server_now;

-- resume --
-- Start a paused session's clock again: the deadline moves by the time it stood still, and
-- silence and a pending tab close count from now.
UPDATE test_session t
   SET paused_seconds = t.paused_seconds + extract(epoch FROM c.at - t.paused_at),
       paused_at = NULL,
       awaiting_candidate = false,
       resumed_at = c.at
  FROM invigilator_act(%(actor)s, %(policy)s::jsonb, %(reason)s) AS c
 WHERE t.candidate_id = %(candidate_id)s
   AND t.paused_at IS NOT NULL
   AND test_session_open(t.status, t.deadline, t.last_heartbeat, t.test_start_time,
                         t.tab_closed_at, t.paused_at, t.resumed_at, t.abandon_after_seconds,
                         t.tab_close, t.at_deadline, t.grace_seconds, t.time_multiplier, c)
RETURNING t.*, c.at AS server_now;

-- reopen --
-- Open an ended session again with `minutes` left, its clock waiting (paused) until its page
-- is next heard from (start_reopened_clock). The time since the end counts as paused; the
-- adjustment makes the deadline now + minutes. The earlier ending stays in the timeline. A
-- session whose answers retention removed stays ended. invigilator_plus, not `+`: Citus
-- refuses a STABLE operator over a column in an UPDATE.
UPDATE test_session t
   SET status = 'active',
       completion_method = NULL,
       completed_at = NULL,
       tab_closed_at = NULL,
       paused_at = c.at,
       awaiting_candidate = true,
       paused_seconds = t.paused_seconds + greatest(extract(epoch FROM c.at - t.completed_at), 0),
       reopen_adjust_seconds = t.reopen_adjust_seconds
           + extract(epoch FROM invigilator_plus(c.at, %(minutes)s::integer * interval '1 minute')
                                - t.deadline)
           - greatest(extract(epoch FROM c.at - t.completed_at), 0),
       reopen_count = t.reopen_count + 1,
       reopened_at = c.at
  FROM invigilator_act(%(actor)s, %(policy)s::jsonb, %(reason)s) AS c
 WHERE t.candidate_id = %(candidate_id)s
   AND t.status <> 'active'
   AND t.purged_at IS NULL
RETURNING t.*, c.at AS server_now;

-- set_accommodations --
-- Change an open session's accommodations (a value not given is kept); the deadline moves with
-- them (trigger), and the grace of policy `grace` scales with the multiplier.
UPDATE test_session t
   SET time_multiplier = coalesce(%(time_multiplier)s::double precision, t.time_multiplier),
       accommodation_minutes = coalesce(%(extra_minutes)s::integer, t.accommodation_minutes)
  FROM invigilator_act(%(actor)s, %(policy)s::jsonb, %(reason)s) AS c
 WHERE t.candidate_id = %(candidate_id)s
   AND test_session_open(t.status, t.deadline, t.last_heartbeat, t.test_start_time,
                         t.tab_closed_at, t.paused_at, t.resumed_at, t.abandon_after_seconds,
                         t.tab_close, t.at_deadline, t.grace_seconds, t.time_multiplier, c)
RETURNING t.*, c.at AS server_now;

-- record_incident --
-- An incident on a session, running or ended (its trigger writes the timeline event and the
-- session.flagged webhook). Returns nothing when there is no such session.
INSERT INTO test_session_incident (candidate_id, actor, severity, reason_code, note)
SELECT t.candidate_id, %(actor)s, %(severity)s, %(reason_code)s, %(note)s
  FROM test_session t
 WHERE t.candidate_id = %(candidate_id)s
RETURNING id, candidate_id, at, actor, severity, reason_code, note;

-- find_due --
-- The sweeper's pick: up to `limit` active sessions that are due, earliest first, locked and
-- skipping rows another sweeper holds (they are that sweeper's batch).
SELECT t.candidate_id
  FROM test_session t, invigilator_rules(%(policy)s::jsonb) AS c
 WHERE t.status = 'active'
   AND NOT test_session_open(t.status, t.deadline, t.last_heartbeat, t.test_start_time,
                             t.tab_closed_at, t.paused_at, t.resumed_at, t.abandon_after_seconds,
                             t.tab_close, t.at_deadline, t.grace_seconds, t.time_multiplier, c)
 ORDER BY test_session_due_at(t.status, t.deadline, t.last_heartbeat, t.test_start_time,
                              t.tab_closed_at, t.paused_at, t.resumed_at, t.abandon_after_seconds,
                              t.tab_close, t.at_deadline, t.grace_seconds, t.time_multiplier, c)
 LIMIT %(limit)s
   FOR UPDATE OF t SKIP LOCKED;

-- find_due_unlocked --
-- find_due without the lock, for a distributed database (Citus refuses FOR UPDATE … SKIP LOCKED
-- with LIMIT across shards). Still exactly once: finalize evaluates the guard again under each
-- row's lock. What is lost is only the split of work: sweepers may pick the same sessions, and
-- the later one then finds them ended.
SELECT t.candidate_id
  FROM test_session t, invigilator_rules(%(policy)s::jsonb) AS c
 WHERE t.status = 'active'
   AND NOT test_session_open(t.status, t.deadline, t.last_heartbeat, t.test_start_time,
                             t.tab_closed_at, t.paused_at, t.resumed_at, t.abandon_after_seconds,
                             t.tab_close, t.at_deadline, t.grace_seconds, t.time_multiplier, c)
 ORDER BY test_session_due_at(t.status, t.deadline, t.last_heartbeat, t.test_start_time,
                              t.tab_closed_at, t.paused_at, t.resumed_at, t.abandon_after_seconds,
                              t.tab_close, t.at_deadline, t.grace_seconds, t.time_multiplier, c)
 LIMIT %(limit)s;

-- shards_of --
-- On a distributed database only: the shard of test_session each of these sessions is on, for
-- the sweeper's batch one shard at a time.
SELECT get_shard_id_for_distribution_column('test_session', x.candidate_id) AS shard
  FROM unnest(%(candidate_ids)s::text[]) WITH ORDINALITY AS x(candidate_id, n)
 ORDER BY x.n;

-- finalize --
-- End each of these sessions that is due, as the rules say: the one ending statement of lazy
-- expiry (one id) and of the sweeper (its batch). The guard is evaluated on the row as it is
-- when locked, so a heartbeat that committed first keeps its session, and a session another
-- caller ended is left alone: each session ends exactly once.
UPDATE test_session t
   SET status = test_session_status_of(
           test_session_end_method(t.status, t.deadline, t.last_heartbeat, t.test_start_time,
                                   t.tab_closed_at, t.paused_at, t.resumed_at, t.abandon_after_seconds,
                                   t.tab_close, t.at_deadline, t.grace_seconds, t.time_multiplier, c)),
       completion_method = test_session_end_method(
           t.status, t.deadline, t.last_heartbeat, t.test_start_time,
           t.tab_closed_at, t.paused_at, t.resumed_at, t.abandon_after_seconds,
           t.tab_close, t.at_deadline, t.grace_seconds, t.time_multiplier, c),
       completed_at = test_session_ends_at(
           t.status, t.deadline, t.last_heartbeat, t.test_start_time,
           t.tab_closed_at, t.paused_at, t.resumed_at, t.abandon_after_seconds,
           t.tab_close, t.at_deadline, t.grace_seconds, t.time_multiplier, c),
       tab_closed_at = NULL
  FROM invigilator_act(%(actor)s, %(policy)s::jsonb) AS c
 WHERE t.candidate_id = ANY (%(candidate_ids)s)
   AND t.status = 'active'
   AND NOT test_session_open(t.status, t.deadline, t.last_heartbeat, t.test_start_time,
                             t.tab_closed_at, t.paused_at, t.resumed_at, t.abandon_after_seconds,
                             t.tab_close, t.at_deadline, t.grace_seconds, t.time_multiplier, c)
RETURNING t.candidate_id, t.status, t.completion_method, t.completed_at;

-- find_active --
-- The guide's "Find Active Sessions": active with time left, over the stored deadline (indexed,
-- as the guide's own query reads it). A session paused for longer than it had left shows again
-- at its resume, when its deadline moves; the live view (analytics `live`) lists it meanwhile.
SELECT t.*, now() AS server_now
  FROM test_session t
 WHERE t.status = 'active' AND t.deadline > now()
 ORDER BY t.deadline, t.candidate_id
 LIMIT %(limit)s;

-- find_abandoned --
-- The guide's "Find Abandoned Sessions": active, silent for `silent_for` (never beat: since start).
SELECT t.*, now() AS server_now
  FROM test_session t
 WHERE t.status = 'active'
   AND coalesce(t.last_heartbeat, t.test_start_time) < now() - %(silent_for)s::interval
   AND t.paused_at IS NULL  -- while paused no ending rule fires
 ORDER BY coalesce(t.last_heartbeat, t.test_start_time), t.candidate_id
 LIMIT %(limit)s;

-- list_sessions --
-- A page of sessions, newest start first, keyset-paginated on (test_start_time, candidate_id).
SELECT t.*, now() AS server_now
  FROM test_session t
 WHERE (%(status)s::text IS NULL OR t.status = %(status)s::text)
   AND (%(after_start)s::timestamptz IS NULL
        OR (t.test_start_time, t.candidate_id::text) < (%(after_start)s::timestamptz, %(after_id)s::text))
 ORDER BY t.test_start_time DESC, t.candidate_id::text DESC
 LIMIT %(limit)s;

-- select_sessions --
-- The sessions a bulk action's filter names: by stored status and by start in [since, until),
-- oldest start first, at most `limit` (the caller asks for one more than it allows).
SELECT t.candidate_id::text AS candidate_id
  FROM test_session t
 WHERE (%(status)s::text IS NULL OR t.status = %(status)s::text)
   AND (%(since)s::timestamptz IS NULL OR t.test_start_time >= %(since)s::timestamptz)
   AND (%(until)s::timestamptz IS NULL OR t.test_start_time < %(until)s::timestamptz)
 ORDER BY t.test_start_time, t.candidate_id::text
 LIMIT %(limit)s;

-- list_events --
-- A session's timeline, oldest first: by time, then id within one transaction. Not by id
-- alone: on Citus an event written through the coordinator (an answer save, a browser event)
-- takes the coordinator's range of ids and one written by a trigger on the shard the worker's
-- (docs/scaling.md), so ids are unique but not in time order across the two.
SELECT e.id, e.candidate_id, e.type, e.at, e.actor, e.detail
  FROM test_session_event e
 WHERE e.candidate_id = %(candidate_id)s
 ORDER BY e.at, e.id;
