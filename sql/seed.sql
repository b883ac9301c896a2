-- Deterministic seed: $1 users with ids 1..$1, one statement (no row-by-row inserts).
INSERT INTO users (id, name, email, updated_at, version)
SELECT g, 'User ' || g, 'user' || g || '@example.com', timestamptz '2024-01-01 00:00:00+00', 0
FROM generate_series(1, $1::bigint) AS g
