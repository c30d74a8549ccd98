-- The order service's business table (its outbox is in outbox.sql).
CREATE TABLE IF NOT EXISTS orders (
    id         bigserial   PRIMARY KEY,
    customer   text        NOT NULL,
    total      numeric     NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
