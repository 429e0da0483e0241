"""Signed webhooks with reliable delivery: a transactional outbox in PostgreSQL (migration
0002 and sql/webhooks.sql), signatures (`sign`), and the delivery worker (`worker`)."""
