-- AEGIS gateway schema, version 1. Portable: the same statements run on SQLite and
-- PostgreSQL (TEXT, BIGINT, no engine-specific types; ids are assigned by the gateway).
-- Times are milliseconds since the Unix epoch (UTC).

CREATE TABLE tokens (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    role        TEXT NOT NULL,
    -- SHA-256 of the token, hex. The token itself is never stored.
    hash        TEXT NOT NULL UNIQUE,
    client_id   BIGINT,
    created_at  BIGINT NOT NULL,
    expires_at  BIGINT,
    revoked_at  BIGINT
);

CREATE TABLE clients (
    -- The FL client id (u64; stored as the two's-complement i64 of the same bits).
    client_id         BIGINT PRIMARY KEY,
    name              TEXT NOT NULL,
    created_at        BIGINT NOT NULL,
    revoked_at        BIGINT,
    -- SHA-256 of the DER certificate signed at enrolment, hex; NULL when none was.
    cert_sha256       TEXT
);

CREATE TABLE jobs (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    owner       TEXT NOT NULL,
    -- The accepted request, defaults filled in (JSON).
    spec        TEXT NOT NULL,
    created_at  BIGINT NOT NULL
);

CREATE TABLE audit (
    seq         BIGINT PRIMARY KEY,
    at          BIGINT NOT NULL,
    actor       TEXT NOT NULL,
    action      TEXT NOT NULL,
    target      TEXT NOT NULL,
    outcome     TEXT NOT NULL,
    detail      TEXT NOT NULL,
    -- SHA-256 (hex) of the previous entry (64 zeros for the first) and of this one.
    prev_hash   TEXT NOT NULL,
    hash        TEXT NOT NULL
);

CREATE INDEX audit_action ON audit (action, seq);
CREATE INDEX tokens_client ON tokens (client_id);
