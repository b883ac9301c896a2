-- The users table, shared by the tests, the local benchmark and Kubernetes.
-- Deliberately no index and no primary key: the benchmark's naive baseline runs
-- without one; sql/index.sql adds it as the first optimisation.
DROP TABLE IF EXISTS users;
CREATE TABLE users (
    id         bigint      NOT NULL,
    name       text        NOT NULL,
    email      text        NOT NULL,
    updated_at timestamptz NOT NULL,
    version    bigint      NOT NULL DEFAULT 0
);
