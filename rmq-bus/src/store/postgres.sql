-- rmq-bus outbox and inbox, PostgreSQL. Idempotent: safe to run again, and from several
-- processes at once (the advisory lock serialises them). Times are milliseconds since the epoch.
SELECT pg_advisory_xact_lock(7262657175);

-- Events written in the application's transactions, waiting for the relay.
CREATE TABLE IF NOT EXISTS rmq_bus_outbox (
    id              BIGSERIAL PRIMARY KEY,
    message_id      TEXT     NOT NULL,
    destination     TEXT     NOT NULL,
    routing_key     TEXT     NOT NULL,
    body            BYTEA    NOT NULL,
    correlation_id  TEXT,
    traceparent     TEXT,
    created_at      BIGINT   NOT NULL,
    attempts        INTEGER  NOT NULL DEFAULT 0,
    next_attempt_at BIGINT   NOT NULL,
    last_error      TEXT
);
CREATE INDEX IF NOT EXISTS rmq_bus_outbox_due ON rmq_bus_outbox (next_attempt_at, id);

-- Events the broker would never take (too large, refused, unroutable), moved aside with why.
CREATE TABLE IF NOT EXISTS rmq_bus_outbox_dead (
    id              BIGINT   PRIMARY KEY,
    message_id      TEXT     NOT NULL,
    destination     TEXT     NOT NULL,
    routing_key     TEXT     NOT NULL,
    body            BYTEA    NOT NULL,
    correlation_id  TEXT,
    traceparent     TEXT,
    created_at      BIGINT   NOT NULL,
    attempts        INTEGER  NOT NULL,
    reason          TEXT     NOT NULL,
    moved_at        BIGINT   NOT NULL
);

-- Messages each consumer has handled, by key (the message_id, or a key of the handler's own).
CREATE TABLE IF NOT EXISTS rmq_bus_inbox (
    consumer    TEXT   NOT NULL,
    message_key TEXT   NOT NULL,
    handled_at  BIGINT NOT NULL,
    PRIMARY KEY (consumer, message_key)
);
CREATE INDEX IF NOT EXISTS rmq_bus_inbox_handled_at ON rmq_bus_inbox (handled_at);

-- Wakes the relays (LISTEN rmq_bus_outbox) when a transaction that wrote events commits.
CREATE OR REPLACE FUNCTION rmq_bus_outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('rmq_bus_outbox', '');
    RETURN NULL;
END
$$;
DROP TRIGGER IF EXISTS rmq_bus_outbox_notify ON rmq_bus_outbox;
CREATE TRIGGER rmq_bus_outbox_notify AFTER INSERT ON rmq_bus_outbox
    FOR EACH STATEMENT EXECUTE FUNCTION rmq_bus_outbox_notify();
