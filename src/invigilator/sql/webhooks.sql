-- The named queries of the webhook outbox (invigilator.webhooks). Deliveries are enqueued by
-- the trigger of migration 0002 in the transaction of the change itself; these claim them,
-- record what happened, produce session.silent, and serve the staff API.

-- sync_env_endpoint --
-- The endpoint of INVIGILATOR_WEBHOOK_URL: created or updated (every process does it at start).
-- One its receiver turned off (410 Gone) stays off until the URL changes.
-- The clock comes in with the VALUES (EXCLUDED.updated_at), not as now() in DO UPDATE SET:
-- Citus refuses any function there that is not IMMUTABLE (webhook_endpoint is a reference table).
INSERT INTO webhook_endpoint (url, secret, include_answers, from_env, active, description,
                              updated_at)
VALUES (%(url)s, NULL, %(include_answers)s, true, true, 'INVIGILATOR_WEBHOOK_URL', now())
ON CONFLICT (from_env) WHERE from_env DO UPDATE
   SET url = EXCLUDED.url,
       include_answers = EXCLUDED.include_answers,
       active = webhook_endpoint.disabled_at IS NULL OR webhook_endpoint.url <> EXCLUDED.url,
       disabled_at = CASE WHEN webhook_endpoint.url = EXCLUDED.url
                          THEN webhook_endpoint.disabled_at END,
       disabled_reason = CASE WHEN webhook_endpoint.url = EXCLUDED.url
                              THEN webhook_endpoint.disabled_reason END,
       updated_at = EXCLUDED.updated_at
 WHERE (webhook_endpoint.url, webhook_endpoint.include_answers, webhook_endpoint.active)
       IS DISTINCT FROM (EXCLUDED.url, EXCLUDED.include_answers,
                         webhook_endpoint.disabled_at IS NULL
                         OR webhook_endpoint.url <> EXCLUDED.url)
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
          w.id AS endpoint_id, w.url, w.from_env, w.include_answers,
          w.secret, w.secret_ciphertext,
          CASE WHEN w.previous_secret_expires_at > now() THEN w.previous_secret_ciphertext END
              AS previous_secret_ciphertext;

-- citus_installed --
-- Whether webhook_delivery is sharded by Citus (`db distribute`): then claim_due cannot lock
-- across shards, and the worker claims in two steps (pick_due, claim_picked).
SELECT EXISTS (SELECT FROM pg_extension WHERE extname = 'citus') AS citus;

-- delivery_sharded --
-- Asked only where the citus extension is installed (citus_tables exists only there).
SELECT EXISTS (SELECT FROM citus_tables
                WHERE table_name = 'webhook_delivery'::regclass
                  AND citus_table_type = 'distributed') AS sharded;

-- pick_due --
-- claim_due's pick, unlocked, for a distributed outbox: Citus refuses FOR UPDATE … SKIP LOCKED
-- with LIMIT across shards. claim_picked leases what is still due. A session's oldest is by
-- time, then id: ids written through the coordinator (session.silent) and by the outbox
-- trigger on a worker come from two ranges, not in time order.
SELECT d.candidate_id, d.id
  FROM webhook_delivery d
  JOIN webhook_endpoint w
    ON w.id = d.endpoint_id AND w.active AND (%(env_secret_known)s OR NOT w.from_env)
 WHERE d.status = 'pending'
   AND d.next_attempt_at <= now()
   AND NOT EXISTS (
           SELECT FROM webhook_delivery e
            WHERE e.candidate_id = d.candidate_id
              AND e.endpoint_id = d.endpoint_id
              AND (e.created_at, e.id) < (d.created_at, d.id)
              AND e.status = 'pending')
 ORDER BY d.next_attempt_at, d.id
 LIMIT %(limit)s;

-- claim_picked --
-- Lease the picked deliveries that are still due. The due check is evaluated again under each
-- row's lock, so a delivery two workers picked is leased by one (the other finds the lease and
-- skips it): one attempt at a time, as with SKIP LOCKED. candidate_id only routes to shards.
UPDATE webhook_delivery d
   SET attempts = d.attempts + 1,
       last_attempt_at = now(),
       next_attempt_at = now() + %(lease)s::interval
  FROM webhook_endpoint w, (SELECT now() AS at) AS g  -- the clock out of the CASE (Citus)
 WHERE d.candidate_id = ANY (%(candidate_ids)s)
   AND d.id = ANY (%(ids)s::bigint[])
   AND d.status = 'pending'
   AND d.next_attempt_at <= now()
   AND w.id = d.endpoint_id
RETURNING d.id, d.event_id, d.type, d.candidate_id, d.payload, d.created_at, d.attempts,
          w.id AS endpoint_id, w.url, w.from_env, w.include_answers,
          w.secret, w.secret_ciphertext,
          CASE WHEN w.previous_secret_expires_at > g.at THEN w.previous_secret_ciphertext END
              AS previous_secret_ciphertext;

-- record_delivered --
-- The receiver answered 2xx. candidate_id (the key) sends it to the delivery's shard alone.
UPDATE webhook_delivery
   SET status = 'delivered', delivered_at = now(), last_status = %(http_status)s,
       last_error = NULL
 WHERE candidate_id = %(candidate_id)s AND id = %(id)s AND status = 'pending';

-- record_failed_attempt --
-- The attempt failed: try again after `delay`, or give up once the next try would fall
-- past `max_age` after the event.
-- The give-up moment is computed once in FROM, so the CASE holds a plain comparison: Citus
-- refuses a non-IMMUTABLE function (now(), timestamptz + interval) inside CASE in a write.
UPDATE webhook_delivery d
   SET last_status = %(http_status)s,
       last_error = %(error)s,
       next_attempt_at = now() + %(delay)s::interval,
       status = CASE WHEN d.created_at < g.cutoff THEN 'failed' ELSE 'pending' END
  FROM (SELECT now() + %(delay)s::interval - %(max_age)s::interval AS cutoff) AS g
 WHERE d.candidate_id = %(candidate_id)s AND d.id = %(id)s AND d.status = 'pending'
RETURNING d.status;

-- enqueue_silent --
-- session.silent for each active session with time left that has sent no heartbeat (or, never
-- having sent one, was started) more than `silent_after` ago and is not yet due to end. Once
-- per silence: keyed by the heartbeat the silence began at, so a new heartbeat and a new
-- silence make a new event. Skips the scan when no endpoint wants session.silent.
INSERT INTO webhook_delivery (event_id, type, candidate_id, endpoint_id, payload, silent_since)
-- The row goes to the snapshot as jsonb: pushed down to a Citus shard, `t` has the shard's row
-- type, which no function can name (migration 0012).
SELECT md5(t.candidate_id::text || '/' || extract(epoch FROM s.since)::text)::uuid,
       'session.silent', t.candidate_id, w.id,
       webhook_session_snapshot(to_jsonb(t), CASE WHEN w.include_answers THEN a.answers END),
       s.since
  FROM test_session t
 CROSS JOIN LATERAL (SELECT coalesce(t.last_heartbeat, t.test_start_time) AS since) s
 -- the answers as test_session_answers() has them, joined (a function reading a table cannot
 -- run in a statement Citus pushes down to a shard)
 CROSS JOIN LATERAL (SELECT coalesce(jsonb_object_agg(x.question, x.value), '{}'::jsonb) AS answers
                       FROM test_session_answer x
                      WHERE x.candidate_id = t.candidate_id) a
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
                         t.tab_closed_at, t.paused_at, t.resumed_at, t.abandon_after_seconds,
                         t.tab_close, t.at_deadline, t.grace_seconds, t.time_multiplier, c)
ON CONFLICT DO NOTHING
RETURNING candidate_id;

-- delete_old --
-- Retention: the delivery log keeps finished deliveries for `keep`.
DELETE FROM webhook_delivery
 WHERE status <> 'pending' AND created_at < now() - %(keep)s::interval;

-- gone --
-- The receiver answered 410 Gone: this delivery fails, and so does the endpoint (turned off,
-- with the reason; its other pending deliveries fail too).
WITH failed AS (
    UPDATE webhook_delivery
       SET status = 'failed', last_status = 410, last_error = %(error)s, next_attempt_at = now()
     WHERE candidate_id = %(candidate_id)s AND id = %(id)s AND status = 'pending'
    RETURNING endpoint_id
), endpoint AS (
    UPDATE webhook_endpoint w
       SET active = false, disabled_at = now(), disabled_reason = %(error)s, updated_at = now()
      FROM failed
     WHERE w.id = failed.endpoint_id AND w.active
    RETURNING w.id
)
UPDATE webhook_delivery d
   SET status = 'failed', last_error = 'endpoint disabled: its receiver answered 410 Gone',
       next_attempt_at = now()
  FROM endpoint
 WHERE d.endpoint_id = endpoint.id AND d.status = 'pending' AND d.id <> %(id)s;

-- forget_expired_secrets --
-- A rotated-out secret stops signing at its expiry; it is not kept past it either.
UPDATE webhook_endpoint
   SET previous_secret_ciphertext = NULL, previous_secret_expires_at = NULL
 WHERE previous_secret_expires_at <= now();

-- stored_secrets --
-- Every stored secret, for re-encryption under the current key (and of 0002's clear ones).
SELECT id, secret, secret_ciphertext, previous_secret_ciphertext
  FROM webhook_endpoint
 WHERE secret IS NOT NULL OR secret_ciphertext IS NOT NULL
    OR previous_secret_ciphertext IS NOT NULL;

-- reseal_secrets --
-- Store re-encrypted secrets, unless the row changed meanwhile (a rotation wins).
UPDATE webhook_endpoint
   SET secret = NULL, secret_ciphertext = %(secret_ciphertext)s,
       previous_secret_ciphertext = %(previous_secret_ciphertext)s
 WHERE id = %(id)s
   AND secret IS NOT DISTINCT FROM %(was_secret)s
   AND secret_ciphertext IS NOT DISTINCT FROM %(was_secret_ciphertext)s
   AND previous_secret_ciphertext IS NOT DISTINCT FROM %(was_previous_secret_ciphertext)s;

-- rotate_secret --
-- A new secret for a staff-registered endpoint; the current one keeps signing for `keep`
-- (none when zero). A previous secret still kept from an earlier rotation is dropped.
-- The expiry is computed in FROM: Citus refuses a non-IMMUTABLE expression inside CASE in a
-- write (webhook_endpoint is a reference table there).
UPDATE webhook_endpoint
   SET previous_secret_ciphertext = CASE WHEN %(keep)s::interval > '0'::interval
                                         THEN secret_ciphertext END,
       previous_secret_expires_at = CASE WHEN %(keep)s::interval > '0'::interval
                                         THEN g.expires END,
       secret_ciphertext = %(secret_ciphertext)s,
       secret = NULL,
       updated_at = g.at
  FROM (SELECT now() AS at, now() + %(keep)s::interval AS expires) AS g
 WHERE id = %(id)s AND active AND NOT from_env
RETURNING id, url, event_types, include_answers, from_env, active, description, created_at,
          updated_at, previous_secret_expires_at, disabled_at, disabled_reason;

-- retry_delivery --
-- Send a failed delivery again, now, to its endpoint if that is still active. Should it fail
-- again, it is retried with backoff for what is left of `max_age` since the event (at least
-- this once).
UPDATE webhook_delivery d
   SET status = 'pending', next_attempt_at = now()
  FROM webhook_endpoint w
 WHERE d.id = %(id)s AND d.status = 'failed' AND w.id = d.endpoint_id AND w.active
RETURNING d.id;

-- create_endpoint --
-- A staff-registered endpoint, its secret encrypted by the service.
INSERT INTO webhook_endpoint (url, secret_ciphertext, event_types, include_answers, description)
VALUES (%(url)s, %(secret_ciphertext)s, %(event_types)s, %(include_answers)s, %(description)s)
RETURNING id, url, event_types, include_answers, from_env, active, description, created_at,
          updated_at, previous_secret_expires_at, disabled_at, disabled_reason;

-- list_endpoints --
-- Every endpoint not removed (active, or turned off by its receiver), oldest first (secrets are
-- never selected).
SELECT id, url, event_types, include_answers, from_env, active, description, created_at,
       updated_at, previous_secret_expires_at, disabled_at, disabled_reason
  FROM webhook_endpoint
 WHERE active OR disabled_at IS NOT NULL
 ORDER BY id;

-- deactivate_endpoint --
-- Remove a staff-registered endpoint (kept, inactive, for its delivery log; the previous
-- secret goes).
UPDATE webhook_endpoint
   SET active = false, disabled_at = NULL, disabled_reason = NULL,
       previous_secret_ciphertext = NULL, previous_secret_expires_at = NULL, updated_at = now()
 WHERE id = %(id)s AND (active OR disabled_at IS NOT NULL) AND NOT from_env
RETURNING id;

-- get_endpoint --
-- One endpoint, active or not (no secret).
SELECT id, url, event_types, include_answers, from_env, active, description, created_at,
       updated_at, previous_secret_expires_at, disabled_at, disabled_reason
  FROM webhook_endpoint
 WHERE id = %(id)s;

-- list_deliveries --
-- The delivery log, newest first, keyset-paginated on id.
-- A session.erased delivery shows no candidate (its key is the erasure's id, migration 0012).
SELECT d.id, d.event_id, d.type,
       CASE WHEN d.type <> 'session.erased' THEN d.candidate_id END AS candidate_id,
       d.endpoint_id, w.url, d.status, d.attempts,
       d.created_at, d.next_attempt_at, d.last_attempt_at, d.last_status, d.last_error,
       d.delivered_at
  FROM webhook_delivery d
  JOIN webhook_endpoint w ON w.id = d.endpoint_id
 WHERE (%(status)s::text IS NULL OR d.status = %(status)s::text)
   AND (%(id)s::bigint IS NULL OR d.id = %(id)s::bigint)
   AND (%(candidate_id)s::text IS NULL OR d.candidate_id::text = %(candidate_id)s::text)
   AND (%(before_id)s::bigint IS NULL OR d.id < %(before_id)s::bigint)
 ORDER BY d.id DESC
 LIMIT %(limit)s;

-- scrape_counts --
-- For GET /metrics: the live set and the outbox backlog (both partial indexes: cheap).
SELECT (SELECT count(*) FROM test_session WHERE status = 'active' AND deadline > now()) AS active,
       (SELECT count(*) FROM webhook_delivery WHERE status = 'pending') AS pending;
