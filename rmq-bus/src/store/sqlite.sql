-- rmq-bus outbox and inbox, SQLite. Idempotent: safe to run again. Times are milliseconds since
-- the epoch.

-- Events written in the application's transactions, waiting for the relay. AUTOINCREMENT: ids
-- are never reused, so they keep the order events were written in.
CREATE TABLE IF NOT EXISTS rmq_bus_outbox (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    message_id      TEXT    NOT NULL,
    destination     TEXT    NOT NULL,
    routing_key     TEXT    NOT NULL,
    body            BLOB    NOT NULL,
    correlation_id  TEXT,
    traceparent     TEXT,
    created_at      INTEGER NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL,
    last_error      TEXT
);
CREATE INDEX IF NOT EXISTS rmq_bus_outbox_due ON rmq_bus_outbox (next_attempt_at, id);

-- Events the broker would never take (too large, refused, unroutable), moved aside with why.
CREATE TABLE IF NOT EXISTS rmq_bus_outbox_dead (
    id              INTEGER PRIMARY KEY,
    message_id      TEXT    NOT NULL,
    destination     TEXT    NOT NULL,
    routing_key     TEXT    NOT NULL,
    body            BLOB    NOT NULL,
    correlation_id  TEXT,
    traceparent     TEXT,
    created_at      INTEGER NOT NULL,
    attempts        INTEGER NOT NULL,
    reason          TEXT    NOT NULL,
    moved_at        INTEGER NOT NULL
);

-- Messages each consumer has handled, by key (the message_id, or a key of the handler's own).
CREATE TABLE IF NOT EXISTS rmq_bus_inbox (
    consumer    TEXT    NOT NULL,
    message_key TEXT    NOT NULL,
    handled_at  INTEGER NOT NULL,
    PRIMARY KEY (consumer, message_key)
);
CREATE INDEX IF NOT EXISTS rmq_bus_inbox_handled_at ON rmq_bus_inbox (handled_at);
