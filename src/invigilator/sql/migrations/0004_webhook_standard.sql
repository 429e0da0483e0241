-- Standard Webhooks: endpoint secrets encrypted at rest, a previous secret kept while
-- receivers move to a rotated one, and endpoints a receiver turned off by answering 410 Gone.
-- Idempotent, like 0001. See the README's Webhooks section.

-- The service encrypts (webhooks/vault.py) with a key from its environment, which the
-- database never sees; so this migration cannot encrypt a secret stored in clear by 0002:
-- the service does at its next start, and empties `secret` then.
ALTER TABLE webhook_endpoint ADD COLUMN IF NOT EXISTS secret_ciphertext text;
-- The secret before the last rotation: deliveries are signed with both until it expires.
ALTER TABLE webhook_endpoint ADD COLUMN IF NOT EXISTS previous_secret_ciphertext text;
ALTER TABLE webhook_endpoint ADD COLUMN IF NOT EXISTS previous_secret_expires_at timestamptz;
-- Set with active = false when the receiver answered 410 Gone (a removed endpoint has neither).
ALTER TABLE webhook_endpoint ADD COLUMN IF NOT EXISTS disabled_at timestamptz;
ALTER TABLE webhook_endpoint ADD COLUMN IF NOT EXISTS disabled_reason text;

ALTER TABLE webhook_endpoint DROP CONSTRAINT IF EXISTS webhook_endpoint_secret_check;
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_constraint
                    WHERE conrelid = 'webhook_endpoint'::regclass
                      AND conname = 'webhook_endpoint_secret_present') THEN
        ALTER TABLE webhook_endpoint ADD CONSTRAINT webhook_endpoint_secret_present
            CHECK (from_env OR secret IS NOT NULL OR secret_ciphertext IS NOT NULL);
    END IF;
END $$;
