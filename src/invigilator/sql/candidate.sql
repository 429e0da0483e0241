-- A minimal candidate table, for a database with no host application behind it
-- (`invigilator db upgrade --create-candidate-table`). A host app's own table is used as it is.
CREATE TABLE IF NOT EXISTS candidate (
    candidate_id varchar(36) PRIMARY KEY,
    created_at   timestamptz NOT NULL DEFAULT now()
);
