-- The role the app connects as: it may read profiles and change them, nothing else
-- (no INSERT, DELETE, DDL or other tables). Created once per cluster; the grant is
-- made again whenever schema.sql recreates the table. The harness sets its password.
DO $$
BEGIN
    CREATE ROLE perflab_app LOGIN;
EXCEPTION WHEN duplicate_object OR unique_violation THEN
    NULL; -- another seed made it first
END
$$;
GRANT SELECT, UPDATE ON users TO perflab_app;
