-- Steward demo schema. Every person, number and address here is FAKE:
-- SSNs use area 000 (never issued), cards are the public test numbers that
-- payment processors publish, e-mail domains are example.com/example.org.

CREATE TABLE customers (
    id         serial PRIMARY KEY,
    full_name  text NOT NULL,
    email      text NOT NULL UNIQUE,
    ssn        text NOT NULL,
    phone      text,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE credit_cards (
    id          serial PRIMARY KEY,
    customer_id int NOT NULL REFERENCES customers (id),
    number      text NOT NULL,
    expires     text NOT NULL
);

CREATE TABLE orders (
    id          serial PRIMARY KEY,
    customer_id int NOT NULL REFERENCES customers (id),
    total       numeric(10, 2) NOT NULL,
    status      text NOT NULL DEFAULT 'paid',
    created_at  timestamptz NOT NULL DEFAULT now()
);

INSERT INTO customers (full_name, email, ssn, phone) VALUES
    ('Ada Example',      'ada@example.com',      '000-12-3456', '+1 555 0100'),
    ('Bram Sample',      'bram@example.org',     '000-23-4567', '+1 555 0101'),
    ('Chidi Placeholder','chidi@example.com',    '000-34-5678', '+1 555 0102'),
    ('Dana Fictional',   'dana@example.org',     '000-45-6789', NULL),
    ('Emeka Testcase',   'emeka@example.com',    '000-56-7890', '+1 555 0104');

INSERT INTO credit_cards (customer_id, number, expires) VALUES
    (1, '4111111111111111', '12/30'),
    (2, '5555555555554444', '01/31'),
    (3, '378282246310005',  '06/29'),
    (4, '6011111111111117', '09/30'),
    (5, '4012888888881881', '03/32');

INSERT INTO orders (customer_id, total, status, created_at)
SELECT 1 + (g % 5), round((10 + (g * 37) % 490)::numeric, 2),
       (ARRAY['paid', 'shipped', 'refunded'])[1 + g % 3],
       timestamptz '2025-01-01 09:00+00' + g * interval '7 hours'
FROM generate_series(1, 40) AS g;
