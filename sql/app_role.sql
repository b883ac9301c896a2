-- The role the app connects as: it may read profiles and change an email, nothing else
-- (no INSERT, DELETE, DDL, other tables or columns, temporary tables). Created once per
-- cluster; the grants are made again whenever schema.sql recreates the table. The
-- harness sets its password.
DO $$
BEGIN
    CREATE ROLE perflab_app LOGIN;
EXCEPTION WHEN duplicate_object OR unique_violation THEN
    NULL; -- another seed made it first
END
$$;
-- UPDATE of the three columns a PATCH changes only: never `id` or `name`.
GRANT SELECT, UPDATE (email, updated_at, version) ON users TO perflab_app;
-- A backstop for sessions that set no timeout of their own (the server sets
-- DB_TIMEOUT_MS, which wins): no statement of this role waits or runs unbounded.
-- (Seeds of several databases may run at once: one of them sets it.)
DO $$
BEGIN
    ALTER ROLE perflab_app SET statement_timeout = '60s';
EXCEPTION WHEN internal_error THEN
    NULL; -- "tuple concurrently updated": another seed set it at the same moment
END
$$;
-- No temporary tables in this database (superusers keep theirs).
DO $$
BEGIN
    EXECUTE format('REVOKE TEMPORARY ON DATABASE %I FROM PUBLIC', current_database());
END
$$;
