-- The order saga's tables in PostgreSQL. `version` orders a row's
-- versions (see order.yaml): an older event never takes a row back.
CREATE TABLE orders (
    id text PRIMARY KEY,
    customer_id text NOT NULL,
    order_date timestamptz NOT NULL,
    total_amount numeric(12, 2) NOT NULL,
    status text NOT NULL,
    metadata jsonb,
    version integer NOT NULL
);
CREATE INDEX orders_by_date ON orders (order_date);

CREATE TABLE order_items (
    order_id text NOT NULL,
    product_id text NOT NULL,
    quantity integer NOT NULL,
    price numeric(12, 2) NOT NULL,
    PRIMARY KEY (order_id, product_id)
);

CREATE TABLE payments (
    id text PRIMARY KEY,
    order_id text NOT NULL,
    amount numeric(12, 2) NOT NULL,
    payment_date timestamptz,
    payment_method text,
    status text NOT NULL,
    version integer NOT NULL
);
CREATE INDEX payments_by_order ON payments (order_id);

CREATE TABLE shipments (
    id text PRIMARY KEY,
    order_id text NOT NULL,
    tracking_number text,
    carrier text,
    ship_date timestamptz,
    delivery_date timestamptz,
    status text NOT NULL,
    version integer NOT NULL
);
CREATE INDEX shipments_by_order ON shipments (order_id);
