-- The outbox table the `postgres_poll` source reads (examples/outbox-poll.toml), with the
-- indexes polling needs and the trigger that wakes sluice up on every insert.
--
--   psql "$DATABASE_URL" -f examples/sql/outbox-poll.sql
--
-- The application inserts its outbox rows in the transaction that changes its business rows,
-- and leaves `seq` and `published_at` alone. Per aggregate, sluice delivers rows in `seq`
-- order; that is the order they were committed in as long as the application serializes
-- writes per aggregate (it does when the transaction also updates the aggregate's own row).

CREATE TABLE IF NOT EXISTS public.outbox (
    id            uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    -- The position polling orders by; sluice uses it as the event id. It must grow with
    -- every insert: an identity (or bigserial) column.
    seq           bigint      GENERATED ALWAYS AS IDENTITY,
    aggregatetype text        NOT NULL,
    aggregateid   text        NOT NULL,
    type          text        NOT NULL,
    payload       jsonb       NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    -- NULL until the row's event is acknowledged end to end; then when sluice marked it.
    published_at  timestamptz
);

-- Each poll locks the next unpublished rows in position order...
CREATE INDEX IF NOT EXISTS outbox_unpublished
    ON public.outbox (seq) WHERE published_at IS NULL;
-- ...and, per aggregate in the batch, walks the aggregate's unpublished rows in order.
CREATE INDEX IF NOT EXISTS outbox_unpublished_by_aggregate
    ON public.outbox (aggregateid, seq) WHERE published_at IS NULL;

-- Wake-up: one notification per inserting statement on the channel the source's
-- `notify_channel` names. Notifications are sent at commit, and only as hints: sluice still
-- polls on its interval, so a lost one costs latency, never data.
CREATE OR REPLACE FUNCTION public.sluice_notify() RETURNS trigger
    LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify(TG_ARGV[0], '');
    RETURN NULL;
END
$$;

CREATE OR REPLACE TRIGGER outbox_notify
    AFTER INSERT ON public.outbox
    FOR EACH STATEMENT EXECUTE FUNCTION public.sluice_notify('sluice_outbox');
