-- The order service's tables: its business table and the outbox sluice reads.
CREATE TABLE IF NOT EXISTS orders (
    id         bigserial   PRIMARY KEY,
    customer   text        NOT NULL,
    total      numeric     NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
-- The outbox table sluice reads (Debezium's column names). A service writes its business rows
-- and one row here in the same transaction; sluice publishes each row once it is committed.
CREATE TABLE IF NOT EXISTS outbox (
    id            uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    aggregatetype text        NOT NULL,   -- routes the event ("order" -> exchange outbox.order)
    aggregateid   text        NOT NULL,   -- orders the events of one aggregate
    type          text        NOT NULL,   -- the event type, such as OrderCreated
    payload       jsonb       NOT NULL,   -- the body, delivered as stored
    traceparent   text,                   -- optional W3C trace context, carried as a header
    created_at    timestamptz NOT NULL DEFAULT now()
);
