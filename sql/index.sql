-- The "+index" optimisation: a unique B-tree index on users.id.
CREATE UNIQUE INDEX IF NOT EXISTS users_id_idx ON users (id);
