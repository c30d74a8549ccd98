-- The products service's table (examples/products-service), read through the gateway of
-- examples/demo-gateway.toml; an UPDATE of a row evicts its cached answer through CDC.
CREATE TABLE IF NOT EXISTS products (
    id         bigint        PRIMARY KEY,
    name       text          NOT NULL,
    price      numeric(10,2) NOT NULL,
    updated_at timestamptz   NOT NULL DEFAULT now()
);

INSERT INTO products (id, name, price) VALUES
    (1, 'Espresso machine', 249.00),
    (2, 'Burr grinder', 129.50),
    (3, 'Milk jug', 14.90),
    (4, 'Tamper', 24.00),
    (5, 'Scale', 39.99)
ON CONFLICT (id) DO NOTHING;
