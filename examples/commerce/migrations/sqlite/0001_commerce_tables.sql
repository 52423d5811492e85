-- The order saga's tables in each node's embedded SQLite (shoal dev).
-- Dates are RFC 3339 text in UTC; metadata is JSON text. `version` orders
-- a row's versions (see order.yaml): an older event never takes a row back.
CREATE TABLE orders (
    id TEXT PRIMARY KEY,
    customer_id TEXT NOT NULL,
    order_date TEXT NOT NULL,
    total_amount NUMERIC NOT NULL,
    status TEXT NOT NULL,
    metadata TEXT,
    version INTEGER NOT NULL
);
CREATE INDEX orders_by_date ON orders (order_date);

CREATE TABLE order_items (
    order_id TEXT NOT NULL,
    product_id TEXT NOT NULL,
    quantity INTEGER NOT NULL,
    price NUMERIC NOT NULL,
    PRIMARY KEY (order_id, product_id)
);

CREATE TABLE payments (
    id TEXT PRIMARY KEY,
    order_id TEXT NOT NULL,
    amount NUMERIC NOT NULL,
    payment_date TEXT,
    payment_method TEXT,
    status TEXT NOT NULL,
    version INTEGER NOT NULL
);
CREATE INDEX payments_by_order ON payments (order_id);

CREATE TABLE shipments (
    id TEXT PRIMARY KEY,
    order_id TEXT NOT NULL,
    tracking_number TEXT,
    carrier TEXT,
    ship_date TEXT,
    delivery_date TEXT,
    status TEXT NOT NULL,
    version INTEGER NOT NULL
);
CREATE INDEX shipments_by_order ON shipments (order_id);
