-- The named queries of personal data and staff sign-ins (invigilator.privacy): signing out
-- of the dashboard, erasing one candidate's session, and the retention sweep.

-- record_sign_out --
-- A dashboard sign-in ends: its cookie is refused by every process from now on.
INSERT INTO invigilator_staff_signout (sign_in_id, expires_at)
VALUES (%(sign_in_id)s, %(expires_at)s)
ON CONFLICT (sign_in_id) DO NOTHING;

-- forget_old_sign_outs --
-- Sign-outs of cookies that have expired anyway: no longer needed to refuse them.
DELETE FROM invigilator_staff_signout WHERE expires_at < now();

-- is_signed_out --
-- Whether a dashboard sign-in has been ended.
SELECT EXISTS (
    SELECT FROM invigilator_staff_signout WHERE sign_in_id = %(sign_in_id)s
) AS signed_out;

-- lock_for_erasure --
-- The session to erase, locked for the rest of the transaction (erase_session counts what it
-- removes). A statement of its own: Citus locks rows only in a statement on one shard.
SELECT t.candidate_id FROM test_session t WHERE t.candidate_id = %(candidate_id)s FOR UPDATE;

-- erase_session --
-- Right to erasure: the session, its answers, its timeline and every webhook delivery about it
-- (pending or logged; the foreign keys cascade) go in one statement. What stays is an audit
-- row that names no candidate, and a session.erased delivery per subscribed endpoint, which
-- names none either. Returns nothing when there is no such session.
-- The session is locked first (lock_for_erasure); every count names the candidate itself, not
-- a correlated row: Citus plans each as a statement of its own on the session's shard.
WITH counted AS (
    SELECT t.candidate_id, t.status,
           -- the questions answered: the rows, and any the guide's column holds besides
           (SELECT count(*)
              FROM (SELECT a.question FROM test_session_answer a
                     WHERE a.candidate_id = %(candidate_id)s
                    UNION
                    SELECT jsonb_object_keys(p.pending_answers) FROM test_session p
                     WHERE p.candidate_id = %(candidate_id)s) q) AS answers,
           (SELECT count(*) FROM test_session_event e
             WHERE e.candidate_id = %(candidate_id)s) AS events,
           (SELECT count(*) FROM webhook_delivery d
             WHERE d.candidate_id = %(candidate_id)s) AS deliveries
      FROM test_session t
     WHERE t.candidate_id = %(candidate_id)s
), removed AS (
    DELETE FROM test_session t USING counted
     WHERE t.candidate_id = counted.candidate_id
    RETURNING t.candidate_id
), audit AS (
    INSERT INTO invigilator_erasure
        (actor, session_status, answers_removed, events_removed, deliveries_removed)
    SELECT %(actor)s, counted.status, counted.answers, counted.events, counted.deliveries
      FROM counted JOIN removed USING (candidate_id)
    RETURNING *
), hook AS (
    INSERT INTO webhook_delivery (event_id, type, candidate_id, endpoint_id, payload)
    -- keyed by the erasure's own id (migration 0012): the distribution column is never NULL
    SELECT audit.erasure_id, 'session.erased', audit.erasure_id, w.id,
           jsonb_build_object('erasure', jsonb_build_object(
               'id', audit.erasure_id,
               'erased_at', audit.erased_at,
               'session_status', audit.session_status,
               'answers_removed', audit.answers_removed,
               'events_removed', audit.events_removed,
               'deliveries_removed', audit.deliveries_removed))
      FROM audit, webhook_endpoint w
     WHERE w.active AND (w.event_types IS NULL OR 'session.erased' = ANY (w.event_types))
    RETURNING 1
)
SELECT audit.erasure_id, audit.erased_at, audit.actor, audit.session_status,
       audit.answers_removed, audit.events_removed, audit.deliveries_removed,
       (SELECT count(*) FROM hook) AS webhooks_queued
  FROM audit;

-- _purge_pick --
-- The sessions purge_ended and purge_ended_unlocked purge: ended long enough ago, oldest
-- first (included in their `due` CTE).
    SELECT t.candidate_id
      FROM test_session t
     WHERE t.completed_at IS NOT NULL AND t.purged_at IS NULL
       AND t.completed_at < now() - %(keep)s::interval
     ORDER BY t.completed_at
     LIMIT %(limit)s

-- _purge_the_due --
-- What purge_ended and purge_ended_unlocked remove of the `due` sessions, and the counts
-- (included after their `due` CTE).
), events AS (
    DELETE FROM test_session_event e USING due
     WHERE e.candidate_id = due.candidate_id
    RETURNING 1
), deliveries AS (
    DELETE FROM webhook_delivery d USING due
     WHERE d.candidate_id = due.candidate_id AND d.status <> 'pending'
    RETURNING 1
), answers AS (
    DELETE FROM test_session_answer a USING due
     WHERE a.candidate_id = due.candidate_id
), pages AS (
    -- a page's device and address are personal data too (migration 0007)
    DELETE FROM test_session_page p USING due
     WHERE p.candidate_id = due.candidate_id
), notes AS (
    -- an incident's note is free text that may name people; its severity and reason stay
    UPDATE test_session_incident i SET note = ''
      FROM due
     WHERE i.candidate_id = due.candidate_id AND i.note <> ''
), totals AS (
    DELETE FROM test_session_answer_total x USING due
     WHERE x.candidate_id = due.candidate_id
), purged AS (
    UPDATE test_session t
       SET pending_answers = '{}'::jsonb, answer_seq = '{}'::jsonb, purged_at = now()
      FROM due
     WHERE t.candidate_id = due.candidate_id
    RETURNING 1
)
SELECT (SELECT count(*) FROM purged) AS sessions,
       (SELECT count(*) FROM events) AS events,
       (SELECT count(*) FROM deliveries) AS deliveries;

-- purge_ended --
-- Retention: for up to `limit` sessions that ended more than `keep` ago, remove the answers,
-- the page claims, the timeline (and logged webhook deliveries, which hold snapshots of the
-- session) and the notes of its incidents. The
-- session row stays, so every count of its columns (status, method, times, sections) stays.
-- Oldest first, by idx_test_session_retention; rows another sweeper holds are skipped.
WITH due AS (
-- include: _purge_pick
       FOR UPDATE SKIP LOCKED
-- include: _purge_the_due

-- purge_ended_unlocked --
-- purge_ended for a distributed database, without the lock (Citus refuses FOR UPDATE across
-- shards): two sweepers may purge the same session at once, which removes nothing twice
-- (the counts of that batch may then count a row twice).
WITH due AS (
-- include: _purge_pick
-- include: _purge_the_due

