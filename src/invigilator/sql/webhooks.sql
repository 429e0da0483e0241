-- The named queries of the webhook outbox (invigilator.webhooks). Deliveries are enqueued by
-- the trigger of migration 0002 in the transaction of the change itself; these claim them,
-- record what happened, produce session.silent, and serve the staff API.

-- sync_env_endpoint --
-- The endpoint of INVIGILATOR_WEBHOOK_URL: created or updated (every process does it at start).
INSERT INTO webhook_endpoint (url, secret, include_answers, from_env, active, description)
VALUES (%(url)s, NULL, %(include_answers)s, true, true, 'INVIGILATOR_WEBHOOK_URL')
ON CONFLICT (from_env) WHERE from_env DO UPDATE
   SET url = EXCLUDED.url,
       include_answers = EXCLUDED.include_answers,
       active = true,
       updated_at = now()
 WHERE (webhook_endpoint.url, webhook_endpoint.include_answers, webhook_endpoint.active)
       IS DISTINCT FROM (EXCLUDED.url, EXCLUDED.include_answers, true)
RETURNING id;

-- deactivate_env_endpoint --
-- INVIGILATOR_WEBHOOK_URL is no longer set: stop delivering to it (its log stays).
UPDATE webhook_endpoint SET active = false, updated_at = now()
 WHERE from_env AND active
RETURNING id;

-- fail_pending_for_endpoint --
-- An endpoint was removed: its pending deliveries will never be sent.
UPDATE webhook_delivery
   SET status = 'failed', last_error = %(reason)s, next_attempt_at = now()
 WHERE endpoint_id = %(endpoint_id)s AND status = 'pending';

-- claim_due --
-- Lease up to `limit` due deliveries, skipping rows another worker holds. Per endpoint and
-- session, only the oldest pending delivery is due: a later one waits for it (ordering).
-- The lease (next_attempt_at in the future) makes a worker that dies mid-POST harmless: the
-- delivery becomes due again when the lease runs out (at least once). A process that does not
-- know INVIGILATOR_WEBHOOK_SECRET leaves the environment's endpoint to those that do.
WITH due AS (
    SELECT d.id
      FROM webhook_delivery d
      JOIN webhook_endpoint w
        ON w.id = d.endpoint_id AND w.active AND (%(env_secret_known)s OR NOT w.from_env)
     WHERE d.status = 'pending'
       AND d.next_attempt_at <= now()
       AND NOT EXISTS (
               SELECT FROM webhook_delivery e
                WHERE e.candidate_id = d.candidate_id
                  AND e.endpoint_id = d.endpoint_id
                  AND e.id < d.id
                  AND e.status = 'pending')
     ORDER BY d.next_attempt_at, d.id
     LIMIT %(limit)s
       FOR UPDATE OF d SKIP LOCKED
)
UPDATE webhook_delivery d
   SET attempts = d.attempts + 1,
       last_attempt_at = now(),
       next_attempt_at = now() + %(lease)s::interval
  FROM due, webhook_endpoint w
 WHERE d.id = due.id AND w.id = d.endpoint_id
RETURNING d.id, d.event_id, d.type, d.candidate_id, d.payload, d.created_at, d.attempts,
          w.id AS endpoint_id, w.url, w.secret, w.from_env, w.include_answers;

-- record_delivered --
-- The receiver answered 2xx.
UPDATE webhook_delivery
   SET status = 'delivered', delivered_at = now(), last_status = %(http_status)s,
       last_error = NULL
 WHERE id = %(id)s AND status = 'pending';

-- record_failed_attempt --
-- The attempt failed: try again after `delay`, or give up once the next try would fall
-- past `max_age` after the event.
UPDATE webhook_delivery
   SET last_status = %(http_status)s,
       last_error = %(error)s,
       next_attempt_at = now() + %(delay)s::interval,
       status = CASE WHEN now() + %(delay)s::interval > created_at + %(max_age)s::interval
                     THEN 'failed' ELSE 'pending' END
 WHERE id = %(id)s AND status = 'pending'
RETURNING status;

-- enqueue_silent --
-- session.silent for each active session with time left that has sent no heartbeat (or, never
-- having sent one, was started) more than `silent_after` ago and is not yet due to end. Once
-- per silence: keyed by the heartbeat the silence began at, so a new heartbeat and a new
-- silence make a new event. Skips the scan when no endpoint wants session.silent.
INSERT INTO webhook_delivery (event_id, type, candidate_id, endpoint_id, payload, silent_since)
SELECT md5(t.candidate_id::text || '/' || extract(epoch FROM s.since)::text)::uuid,
       'session.silent', t.candidate_id, w.id,
       webhook_session_snapshot(t, w.include_answers), s.since
  FROM test_session t
 CROSS JOIN LATERAL (SELECT coalesce(t.last_heartbeat, t.test_start_time) AS since) s
 CROSS JOIN invigilator_rules(%(policy)s::jsonb) AS c
  JOIN webhook_endpoint w
    ON w.active AND (w.event_types IS NULL OR 'session.silent' = ANY (w.event_types))
 WHERE EXISTS (SELECT FROM webhook_endpoint x
                WHERE x.active
                  AND (x.event_types IS NULL OR 'session.silent' = ANY (x.event_types)))
   AND t.status = 'active'
   AND t.deadline > now()
   AND s.since < now() - %(silent_after)s::interval
   AND test_session_open(t.status, t.deadline, t.last_heartbeat, t.test_start_time,
                         t.tab_closed_at, c)
ON CONFLICT DO NOTHING
RETURNING candidate_id;

-- delete_old --
-- Retention: the delivery log keeps finished deliveries for `keep`.
DELETE FROM webhook_delivery
 WHERE status <> 'pending' AND created_at < now() - %(keep)s::interval;

-- create_endpoint --
-- A staff-registered endpoint.
INSERT INTO webhook_endpoint (url, secret, event_types, include_answers, description)
VALUES (%(url)s, %(secret)s, %(event_types)s, %(include_answers)s, %(description)s)
RETURNING *;

-- list_endpoints --
-- Every active endpoint, oldest first (secrets are never selected).
SELECT id, url, event_types, include_answers, from_env, active, description, created_at,
       updated_at
  FROM webhook_endpoint
 WHERE active
 ORDER BY id;

-- deactivate_endpoint --
-- Remove a staff-registered endpoint (kept, inactive, for its delivery log).
UPDATE webhook_endpoint SET active = false, updated_at = now()
 WHERE id = %(id)s AND active AND NOT from_env
RETURNING id;

-- get_endpoint --
-- One endpoint, active or not (no secret).
SELECT id, url, event_types, include_answers, from_env, active, description, created_at,
       updated_at
  FROM webhook_endpoint
 WHERE id = %(id)s;

-- list_deliveries --
-- The delivery log, newest first, keyset-paginated on id.
SELECT d.id, d.event_id, d.type, d.candidate_id, d.endpoint_id, w.url, d.status, d.attempts,
       d.created_at, d.next_attempt_at, d.last_attempt_at, d.last_status, d.last_error,
       d.delivered_at
  FROM webhook_delivery d
  JOIN webhook_endpoint w ON w.id = d.endpoint_id
 WHERE (%(status)s::text IS NULL OR d.status = %(status)s::text)
   AND (%(candidate_id)s::text IS NULL OR d.candidate_id::text = %(candidate_id)s::text)
   AND (%(before_id)s::bigint IS NULL OR d.id < %(before_id)s::bigint)
 ORDER BY d.id DESC
 LIMIT %(limit)s;

-- scrape_counts --
-- For GET /metrics: the live set and the outbox backlog (both partial indexes: cheap).
SELECT (SELECT count(*) FROM test_session WHERE status = 'active' AND deadline > now()) AS active,
       (SELECT count(*) FROM webhook_delivery WHERE status = 'pending') AS pending;
