"""The answer storage before migration 0006, kept for bench.answers' baseline: all of a
session's answers in one JSONB value, `test_session.pending_answers`, rewritten whole by every
save (decompressed, merged, recompressed, written as new TOAST chunks), and the size limit
checked on the whole document turned into text. It is the statement Invigilator ran then (with
today's guard of the session's rules), reshaped only to return what today's store reads
(`applied`) and to refuse over the limit as today's statement does (it raises, migration 0011;
the store then rolled the transaction back instead), plus the `answers_saved` event as today's
statement writes it (for the questions a save answers for the first time; the timeline trigger
wrote one per save then), so that the two storages differ in storage alone.

`python -m bench.launch` installs it in the server and in each of its workers when
BENCH_ANSWER_STORAGE=jsonb (the workers are spawned: they import bench.launch again).
"""

from __future__ import annotations

import os

SAVE_ANSWERS = """
WITH session AS (
    SELECT t.candidate_id, t.status, t.deadline, t.paused_at, c.at, t.pending_answers,
           t.answer_seq,
           ARRAY(SELECT a.key FROM jsonb_each(%(answers)s::jsonb) a
                  WHERE coalesce((t.answer_seq ->> a.key)::bigint, -1) <= %(seq)s::bigint)
               AS applied
      FROM test_session t, invigilator_act('candidate', %(policy)s::jsonb) AS c
     WHERE t.candidate_id = %(candidate_id)s
       AND test_session_takes_answers(t.status, t.deadline, t.last_heartbeat,
                                      t.test_start_time, t.tab_closed_at, t.paused_at,
                                      t.resumed_at, t.abandon_after_seconds, t.tab_close,
                                      t.at_deadline, t.grace_seconds, t.time_multiplier, c)
       FOR UPDATE OF t
), merged AS (
    SELECT s.*,
           s.pending_answers || (
               SELECT coalesce(jsonb_object_agg(a.key, a.value), '{}'::jsonb)
                 FROM jsonb_each(%(answers)s::jsonb) a WHERE a.key = ANY (s.applied)) AS answers,
           s.answer_seq || (
               SELECT coalesce(jsonb_object_agg(a.key, %(seq)s::bigint), '{}'::jsonb)
                 FROM jsonb_each(%(answers)s::jsonb) a WHERE a.key = ANY (s.applied)) AS seqs
      FROM session s
), sized AS (
    SELECT m.*, octet_length(m.answers::text) AS answers_bytes FROM merged m
), updated AS (
    UPDATE test_session t
       SET pending_answers = z.answers, answer_seq = z.seqs, last_activity = z.at
      FROM sized z
     WHERE t.candidate_id = z.candidate_id
       AND (z.answers_bytes <= %(max_total_bytes)s::bigint OR %(max_total_bytes)s IS NULL)
    RETURNING t.*
), event AS (
    INSERT INTO test_session_event (candidate_id, type, actor, detail)
    SELECT u.candidate_id, 'answers_saved', 'candidate',
           jsonb_build_object('questions', to_jsonb(f.questions), 'seq', %(seq)s::bigint)
      FROM updated u, sized z,
           LATERAL (SELECT ARRAY(SELECT q FROM unnest(z.applied) AS q
                                  WHERE NOT z.answer_seq ? q ORDER BY q) AS questions) AS f
     WHERE cardinality(f.questions) > 0
)
SELECT z.candidate_id, z.status, z.deadline, z.paused_at, z.at AS server_now,
       CASE WHEN z.answers_bytes > %(max_total_bytes)s::bigint
            THEN test_session_answers_too_large(z.answers_bytes, %(max_total_bytes)s::bigint)
            ELSE z.answers_bytes END AS total_bytes,
       z.applied, u.pending_answers, u.answer_seq
  FROM sized z LEFT JOIN updated u ON u.candidate_id = z.candidate_id
"""


def install() -> None:
    """Make the store run the old statement (in this process)."""
    from invigilator import sql

    sql.queries()["save_answers"] = SAVE_ANSWERS


def install_if_asked() -> None:
    if os.environ.get("BENCH_ANSWER_STORAGE") == "jsonb":
        install()
