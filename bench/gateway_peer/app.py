# bench/gateway_peer/app.py — the Python peer of the AEGIS gateway benchmark (bench/gateway.sh):
# the old Python system's stack, FastAPI served by Uvicorn (uvloop + httptools, as
# `uvicorn[standard]` gives) over TLS, answering the one endpoint the benchmark measures,
# `GET /v1/jobs/{job_id}` of docs/api.md, the way the gateway does:
#
#   1. `Authorization: Bearer <token>` is required; the SHA-256 of the token is looked up in a
#      SQLite table of token hashes; unknown, expired or revoked tokens (and a missing or
#      malformed header) get 401 {"detail": "invalid or missing bearer token"} with
#      `WWW-Authenticate: Bearer`; a role other than admin/scientist gets 403;
#   2. the job row and its per-round rows are looked up in SQLite (404 {"detail": "job not
#      found"} otherwise);
#   3. the job JSON of docs/api.md is returned through Pydantic response models (FastAPI's
#      usual way, which also gives it its OpenAPI document).
#
# It is written to be a fair, fast FastAPI service, not a strawman: one SQLite connection per
# worker process opened at start (WAL mode, prepared statements cached by sqlite3), `async def`
# handlers that call SQLite directly (point reads from the page cache take microseconds, less
# than a hop to the thread pool), no middleware, no access log.
#
# Usage (bench/gateway.sh does all of this; paths relative to the repo root):
#   target/bench-venv/bin/python bench/gateway_peer/app.py init --db DIR/peer.db
#       creates the database and prints two lines: a bearer token of role admin (expiring in a
#       day) and the id of a completed 5-round job; plus 99 other tokens and jobs so that the
#       lookups go through real B-tree indexes.
#   GATEWAY_PEER_DB=DIR/peer.db target/bench-venv/bin/uvicorn app:app \
#       --app-dir bench/gateway_peer --host 127.0.0.1 --port PORT \
#       --ssl-keyfile PKI/server.key --ssl-certfile PKI/server.pem \
#       --workers 1 --loop uvloop --http httptools --log-level warning --no-access-log
#   curl --cacert PKI/ca.pem -H "Authorization: Bearer $TOKEN" https://localhost:PORT/v1/jobs/$ID
#
# Dependencies: bench/gateway_peer/requirements.txt (exact pins of the full closure, CPython 3.11).
from __future__ import annotations

import argparse
import hashlib
import json
import os
import secrets
import sqlite3
import sys
from datetime import datetime, timedelta, timezone
from typing import Literal, Optional

from fastapi import Depends, FastAPI, Header, HTTPException
from pydantic import BaseModel

SCHEMA = """
PRAGMA journal_mode = WAL;
CREATE TABLE IF NOT EXISTS tokens (
    id          INTEGER PRIMARY KEY,
    name        TEXT NOT NULL,
    role        TEXT NOT NULL CHECK (role IN ('admin', 'scientist', 'client')),
    token_hash  BLOB NOT NULL UNIQUE,        -- SHA-256 of the token; the token itself is never stored
    client_id   TEXT,
    created_at  TEXT NOT NULL,
    expires_at  TEXT,                        -- RFC 3339 UTC, same width as created_at, or NULL
    revoked_at  TEXT
);
CREATE TABLE IF NOT EXISTS jobs (
    id            TEXT PRIMARY KEY,
    name          TEXT NOT NULL,
    owner         TEXT NOT NULL,
    status        TEXT NOT NULL,
    created_at    TEXT NOT NULL,
    rounds_total  INTEGER NOT NULL,
    rounds_done   INTEGER NOT NULL,
    error         TEXT,
    spec          TEXT NOT NULL              -- JSON, defaults filled in
);
CREATE TABLE IF NOT EXISTS rounds (
    job_id              TEXT NOT NULL REFERENCES jobs (id),
    round               INTEGER NOT NULL,
    completed           INTEGER NOT NULL,
    abort_reason        TEXT,
    connected           INTEGER NOT NULL,
    sampled             INTEGER NOT NULL,
    survived            INTEGER NOT NULL,
    dropped             TEXT NOT NULL,       -- JSON array, one per SecAgg stage
    stage_seconds       TEXT NOT NULL,       -- JSON array, one per SecAgg stage
    seconds             REAL NOT NULL,
    bytes_sent          INTEGER NOT NULL,
    bytes_received      INTEGER NOT NULL,
    degree              INTEGER NOT NULL,
    threshold           INTEGER NOT NULL,
    params              INTEGER NOT NULL,
    weight_sum          INTEGER NOT NULL,
    loss                REAL,
    accuracy            REAL,
    quantization_error  REAL,
    PRIMARY KEY (job_id, round)
);
"""


# ------------------------------------------------------------------ response models (docs/api.md)
class ModelSpec(BaseModel):
    kind: Literal["softmax_regression"]
    inputs: int
    classes: int


class SecAggSpec(BaseModel):
    dropout_rate: float = 0.1
    corrupt_rate: float = 0.0
    clip: float = 1.0
    max_weight: int = 10000


class TrainSpec(BaseModel):
    epochs: int = 2
    batch_size: int = 16
    learning_rate: float = 0.1


class JobSpec(BaseModel):
    name: str
    model: ModelSpec
    rounds: int = 5
    cohort_size: int = 10
    min_clients: int = 3
    secagg: SecAggSpec = SecAggSpec()
    train: TrainSpec = TrainSpec()


class Round(BaseModel):
    round: int
    completed: bool
    abort_reason: Optional[str]
    connected: int
    sampled: int
    survived: int
    dropped: list[int]
    stage_seconds: list[float]
    seconds: float
    bytes_sent: int
    bytes_received: int
    degree: int
    threshold: int
    params: int
    weight_sum: int
    loss: Optional[float]
    accuracy: Optional[float]
    quantization_error: Optional[float]


class Job(BaseModel):
    id: str
    name: str
    owner: str
    status: Literal["queued", "running", "completed", "failed", "cancelled"]
    created_at: str
    rounds_total: int
    rounds_done: int
    error: Optional[str]
    spec: JobSpec
    history: list[Round]


class Caller(BaseModel):
    name: str
    role: str


# ------------------------------------------------------------------ app
def rfc3339(t: datetime) -> str:
    return t.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


def connect(path: str) -> sqlite3.Connection:
    db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA synchronous = NORMAL")
    return db


_db: Optional[sqlite3.Connection] = None


def db() -> sqlite3.Connection:
    global _db
    if _db is None:  # one connection per worker process, opened on its first request
        _db = connect(os.environ["GATEWAY_PEER_DB"])
    return _db


app = FastAPI(title="AEGIS gateway peer (FastAPI)", version="1")

UNAUTHORIZED = HTTPException(
    status_code=401, detail="invalid or missing bearer token", headers={"WWW-Authenticate": "Bearer"}
)


async def caller(authorization: Optional[str] = Header(default=None)) -> Caller:
    if authorization is None:
        raise UNAUTHORIZED
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise UNAUTHORIZED
    digest = hashlib.sha256(token.strip().encode()).digest()
    row = db().execute(
        "SELECT name, role, expires_at, revoked_at FROM tokens WHERE token_hash = ?", (digest,)
    ).fetchone()
    if row is None:
        raise UNAUTHORIZED
    name, role, expires_at, revoked_at = row
    if revoked_at is not None or (expires_at is not None and expires_at <= rfc3339(datetime.now(timezone.utc))):
        raise UNAUTHORIZED
    return Caller(name=name, role=role)


@app.get("/healthz")
async def healthz() -> dict:
    db().execute("SELECT 1").fetchone()
    return {"status": "ok", "database": "ok", "fl_server": "unreachable"}


@app.get("/v1/jobs/{job_id}", response_model=Job)
async def get_job(job_id: str, who: Caller = Depends(caller)) -> Job:
    if who.role not in ("admin", "scientist"):
        raise HTTPException(status_code=403, detail=f"role {who.role} may not read jobs")
    c = db()
    row = c.execute(
        "SELECT id, name, owner, status, created_at, rounds_total, rounds_done, error, spec "
        "FROM jobs WHERE id = ?",
        (job_id,),
    ).fetchone()
    if row is None:
        raise HTTPException(status_code=404, detail="job not found")
    history = [
        Round(
            round=r[0], completed=bool(r[1]), abort_reason=r[2], connected=r[3], sampled=r[4],
            survived=r[5], dropped=json.loads(r[6]), stage_seconds=json.loads(r[7]), seconds=r[8],
            bytes_sent=r[9], bytes_received=r[10], degree=r[11], threshold=r[12], params=r[13],
            weight_sum=r[14], loss=r[15], accuracy=r[16], quantization_error=r[17],
        )
        for r in c.execute(
            "SELECT round, completed, abort_reason, connected, sampled, survived, dropped, "
            "stage_seconds, seconds, bytes_sent, bytes_received, degree, threshold, params, "
            "weight_sum, loss, accuracy, quantization_error FROM rounds WHERE job_id = ? ORDER BY round",
            (job_id,),
        )
    ]
    return Job(
        id=row[0], name=row[1], owner=row[2], status=row[3], created_at=row[4], rounds_total=row[5],
        rounds_done=row[6], error=row[7], spec=JobSpec.model_validate_json(row[8]), history=history,
    )


# ------------------------------------------------------------------ `init`: the bench database
def init(path: str, rounds: int) -> None:
    if os.path.exists(path):
        sys.exit(f"app.py init: {path} exists")
    c = connect(path)
    c.executescript(SCHEMA)
    rng = secrets.SystemRandom()
    now = datetime.now(timezone.utc)
    c.execute("BEGIN")
    bench_token = bench_job = None
    for i in range(100):
        token = "aegis_" + secrets.token_urlsafe(32)  # 43 URL-safe Base64 characters
        c.execute(
            "INSERT INTO tokens (name, role, token_hash, created_at, expires_at) VALUES (?, ?, ?, ?, ?)",
            (f"user{i}", ("admin", "scientist", "client")[i % 3], hashlib.sha256(token.encode()).digest(),
             rfc3339(now), rfc3339(now + timedelta(days=1))),
        )
        job_id = "job-" + secrets.token_hex(6)
        spec = JobSpec(name=f"digits-{i}", model=ModelSpec(kind="softmax_regression", inputs=64, classes=10),
                       rounds=rounds)
        c.execute(
            "INSERT INTO jobs VALUES (?, ?, ?, 'completed', ?, ?, ?, NULL, ?)",
            (job_id, spec.name, f"user{i}", rfc3339(now - timedelta(minutes=10)), rounds, rounds,
             spec.model_dump_json()),
        )
        for r in range(1, rounds + 1):
            dropped = [0, 0, rng.randint(0, 2), 0, 0]
            stages = [round(rng.uniform(0.005, 0.3), 4) for _ in range(5)]
            c.execute(
                "INSERT INTO rounds VALUES (?, ?, 1, NULL, 10, 10, ?, ?, ?, ?, ?, ?, 9, 5, 650, ?, ?, ?, ?)",
                (job_id, r, 10 - sum(dropped), json.dumps(dropped), json.dumps(stages), round(sum(stages), 4),
                 rng.randint(100_000, 200_000), rng.randint(50_000, 80_000), rng.randint(1000, 1600),
                 round(rng.uniform(0.3, 1.0), 4), round(rng.uniform(0.6, 0.95), 4), 1e-4),
            )
        if i == 0:
            bench_token, bench_job = token, job_id
    c.execute("COMMIT")
    c.close()
    print(bench_token)
    print(bench_job)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description="the bench database of the FastAPI gateway peer")
    sub = p.add_subparsers(dest="cmd", required=True)
    i = sub.add_parser("init", help="create DB; print a token of role admin and a job id")
    i.add_argument("--db", required=True)
    i.add_argument("--rounds", type=int, default=5, help="rounds of history per job (default 5)")
    a = p.parse_args()
    init(a.db, a.rounds)
