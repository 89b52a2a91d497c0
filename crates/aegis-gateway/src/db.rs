//! The gateway's state in SQL: tokens (hashes only), enrolled clients, jobs and the audit log.
//!
//! One code path for both engines: sqlx's `Any` driver with portable statements (`$n`
//! placeholders, which SQLite reads too) and one set of migrations (`migrations/`). A
//! `sqlite:` URL (the embedded default; the file is created) or a `postgres://` URL.

use std::str::FromStr;
use std::time::Duration;

use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Row};

use crate::audit::{self, Entry};
use crate::error::{Error, Result};

/// Token roles.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Everything.
    Admin,
    /// Jobs and models.
    Scientist,
    /// An FL client: its own enrolment, the job list.
    Client,
}

impl Role {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Scientist => "scientist",
            Role::Client => "client",
        }
    }
}

impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Role, String> {
        match s {
            "admin" => Ok(Role::Admin),
            "scientist" => Ok(Role::Scientist),
            "client" => Ok(Role::Client),
            other => Err(format!(
                "unknown role {other:?}: expected admin, scientist or client"
            )),
        }
    }
}

/// A stored token (never the token itself).
#[derive(Clone, Debug)]
pub struct TokenRow {
    /// Public id (for listing and revoking).
    pub id: String,
    /// Who or what holds it.
    pub name: String,
    /// What it may do.
    pub role: Role,
    /// The enrolled client it belongs to (role `client`).
    pub client_id: Option<u64>,
    /// Milliseconds since the Unix epoch.
    pub created_at: i64,
    /// When it stops working.
    pub expires_at: Option<i64>,
    /// When it was revoked.
    pub revoked_at: Option<i64>,
}

/// An enrolled client.
#[derive(Clone, Debug)]
pub struct ClientRow {
    /// The FL client id.
    pub client_id: u64,
    /// A label.
    pub name: String,
    /// Milliseconds since the Unix epoch.
    pub created_at: i64,
    /// When it was revoked.
    pub revoked_at: Option<i64>,
    /// SHA-256 of the certificate signed at enrolment.
    pub cert_sha256: Option<String>,
}

/// A job as the gateway records it (its progress lives on the FL server).
#[derive(Clone, Debug)]
pub struct JobRow {
    /// Job id.
    pub id: String,
    /// A label.
    pub name: String,
    /// Token name of its creator.
    pub owner: String,
    /// The accepted request (JSON).
    pub spec: String,
    /// Milliseconds since the Unix epoch.
    pub created_at: i64,
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// The database.
#[derive(Clone, Debug)]
pub struct Db {
    pool: AnyPool,
    /// Serializes this process's audit appends (the `seq` primary key also refuses a second
    /// writer's duplicate, which then retries).
    audit_lock: std::sync::Arc<tokio::sync::Mutex<()>>,
    kind: &'static str,
}

fn db_err(what: &str) -> impl FnOnce(sqlx::Error) -> Error + '_ {
    move |e| Error::Database(format!("{what}: {e}"))
}

fn token_row(r: &AnyRow) -> Result<TokenRow> {
    let role: String = r.try_get("role").map_err(db_err("token row"))?;
    Ok(TokenRow {
        id: r.try_get("id").map_err(db_err("token row"))?,
        name: r.try_get("name").map_err(db_err("token row"))?,
        role: role
            .parse()
            .map_err(|e: String| Error::Database(format!("token row: {e}")))?,
        client_id: r
            .try_get::<Option<i64>, _>("client_id")
            .map_err(db_err("token row"))?
            .map(|v| v as u64),
        created_at: r.try_get("created_at").map_err(db_err("token row"))?,
        expires_at: r.try_get("expires_at").map_err(db_err("token row"))?,
        revoked_at: r.try_get("revoked_at").map_err(db_err("token row"))?,
    })
}

fn client_row(r: &AnyRow) -> Result<ClientRow> {
    Ok(ClientRow {
        client_id: r
            .try_get::<i64, _>("client_id")
            .map_err(db_err("client row"))? as u64,
        name: r.try_get("name").map_err(db_err("client row"))?,
        created_at: r.try_get("created_at").map_err(db_err("client row"))?,
        revoked_at: r.try_get("revoked_at").map_err(db_err("client row"))?,
        cert_sha256: r.try_get("cert_sha256").map_err(db_err("client row"))?,
    })
}

fn job_row(r: &AnyRow) -> Result<JobRow> {
    Ok(JobRow {
        id: r.try_get("id").map_err(db_err("job row"))?,
        name: r.try_get("name").map_err(db_err("job row"))?,
        owner: r.try_get("owner").map_err(db_err("job row"))?,
        spec: r.try_get("spec").map_err(db_err("job row"))?,
        created_at: r.try_get("created_at").map_err(db_err("job row"))?,
    })
}

fn audit_row(r: &AnyRow) -> Result<Entry> {
    Ok(Entry {
        seq: r.try_get("seq").map_err(db_err("audit row"))?,
        at: r.try_get("at").map_err(db_err("audit row"))?,
        actor: r.try_get("actor").map_err(db_err("audit row"))?,
        action: r.try_get("action").map_err(db_err("audit row"))?,
        target: r.try_get("target").map_err(db_err("audit row"))?,
        outcome: r.try_get("outcome").map_err(db_err("audit row"))?,
        detail: r.try_get("detail").map_err(db_err("audit row"))?,
        prev_hash: r.try_get("prev_hash").map_err(db_err("audit row"))?,
        hash: r.try_get("hash").map_err(db_err("audit row"))?,
    })
}

/// Whether an error is a unique-constraint violation (another writer took the key).
fn is_conflict(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.is_unique_violation())
}

impl Db {
    /// Connects to `url` (`sqlite:PATH` — created 0600 if missing — or `postgres://…`) and
    /// applies the migrations.
    pub async fn connect(url: &str) -> Result<Db> {
        Db::open(url, true).await
    }

    /// Connects to an existing database (a missing SQLite file is an error, not a new empty
    /// database): for commands that only read, such as verifying the audit log.
    pub async fn connect_existing(url: &str) -> Result<Db> {
        Db::open(url, false).await
    }

    async fn open(url: &str, create: bool) -> Result<Db> {
        sqlx::any::install_default_drivers();
        let (url, kind) = if let Some(path) = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))
        {
            let path = path.split('?').next().unwrap_or(path);
            if path.is_empty() || path == ":memory:" {
                return Err(Error::Config(
                    "the SQLite database must be a file: sqlite:PATH".into(),
                ));
            }
            let file = std::path::Path::new(path);
            if !file.exists() {
                if !create {
                    return Err(Error::Config(format!("{path}: no such database file")));
                }
                // Created private; SQLite gives its -wal and -shm files the same mode.
                if let Err(e) = aegis_crypto::fsutil::create_private(file, b"")
                    && !file.exists()
                {
                    return Err(Error::Io(format!("creating {path}: {e}")));
                }
            }
            (format!("sqlite://{path}?mode=rw"), "sqlite")
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            (url.to_string(), "postgres")
        } else {
            return Err(Error::Config(
                "database URL: expected sqlite:PATH or postgres://USER@HOST/DB".into(),
            ));
        };
        let mut opts = AnyPoolOptions::new()
            .acquire_timeout(Duration::from_secs(10))
            .max_connections(if kind == "sqlite" { 4 } else { 16 });
        if kind == "sqlite" {
            // Each connection: wait for a writer instead of failing at once.
            opts = opts.after_connect(|conn, _| {
                Box::pin(async move {
                    sqlx::Executor::execute(&mut *conn, "PRAGMA busy_timeout = 5000").await?;
                    Ok(())
                })
            });
        }
        let pool = opts.connect(&url).await.map_err(|e| {
            Error::Database(format!("connecting to the {kind} database: {}", redact(&e)))
        })?;
        if kind == "sqlite" {
            // Readers do not block the writer; the file stays consistent after a crash.
            sqlx::query("PRAGMA journal_mode = WAL")
                .execute(&pool)
                .await
                .map_err(db_err("enabling WAL"))?;
        }
        sqlx::migrate!("./migrations")
            .run(&pool)
            .await
            .map_err(|e| Error::Database(format!("applying migrations: {e}")))?;
        Ok(Db {
            pool,
            audit_lock: std::sync::Arc::new(tokio::sync::Mutex::new(())),
            kind,
        })
    }

    /// `"sqlite"` or `"postgres"`.
    pub fn kind(&self) -> &'static str {
        self.kind
    }

    /// A trivial query: is the database answering?
    pub async fn ping(&self) -> bool {
        sqlx::query("SELECT 1").execute(&self.pool).await.is_ok()
    }

    /// Closes the pool.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    // ------------------------------------------------------------------ tokens

    /// Stores a token's hash.
    pub async fn insert_token(&self, row: &TokenRow, hash: &str) -> Result<()> {
        sqlx::query(
            "INSERT INTO tokens (id, name, role, hash, client_id, created_at, expires_at, revoked_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, NULL)",
        )
        .bind(&row.id)
        .bind(&row.name)
        .bind(row.role.as_str())
        .bind(hash)
        .bind(row.client_id.map(|c| c as i64))
        .bind(row.created_at)
        .bind(row.expires_at)
        .execute(&self.pool)
        .await
        .map_err(db_err("storing a token"))?;
        Ok(())
    }

    /// The token with this hash, if any (revoked and expired ones included).
    pub async fn token_by_hash(&self, hash: &str) -> Result<Option<TokenRow>> {
        let row = sqlx::query(
            "SELECT id, name, role, client_id, created_at, expires_at, revoked_at FROM tokens WHERE hash = $1",
        )
        .bind(hash)
        .fetch_optional(&self.pool)
        .await
        .map_err(db_err("looking up a token"))?;
        row.as_ref().map(token_row).transpose()
    }

    /// Every token, newest first.
    pub async fn tokens(&self) -> Result<Vec<TokenRow>> {
        let rows = sqlx::query(
            "SELECT id, name, role, client_id, created_at, expires_at, revoked_at FROM tokens ORDER BY created_at DESC, id",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(db_err("listing tokens"))?;
        rows.iter().map(token_row).collect()
    }

    /// Revokes a token; `false` when there is no such token. Revoking twice keeps the first
    /// time.
    pub async fn revoke_token(&self, id: &str) -> Result<bool> {
        let now = now_ms();
        let res =
            sqlx::query("UPDATE tokens SET revoked_at = COALESCE(revoked_at, $1) WHERE id = $2")
                .bind(now)
                .bind(id)
                .execute(&self.pool)
                .await
                .map_err(db_err("revoking a token"))?;
        Ok(res.rows_affected() > 0)
    }

    // ------------------------------------------------------------------ clients

    /// Enrols a client; `false` when the id is taken.
    pub async fn insert_client(&self, row: &ClientRow) -> Result<bool> {
        let res = sqlx::query(
            "INSERT INTO clients (client_id, name, created_at, revoked_at, cert_sha256) VALUES ($1, $2, $3, NULL, $4)",
        )
        .bind(row.client_id as i64)
        .bind(&row.name)
        .bind(row.created_at)
        .bind(&row.cert_sha256)
        .execute(&self.pool)
        .await;
        match res {
            Ok(_) => Ok(true),
            Err(e) if is_conflict(&e) => Ok(false),
            Err(e) => Err(db_err("enrolling a client")(e)),
        }
    }

    /// Removes an enrolment that could not be completed.
    pub async fn delete_client(&self, client_id: u64) -> Result<()> {
        sqlx::query("DELETE FROM clients WHERE client_id = $1")
            .bind(client_id as i64)
            .execute(&self.pool)
            .await
            .map_err(db_err("removing a client"))?;
        Ok(())
    }

    /// The next unused client id: one above the largest below 2^63 (ids are stored as i64),
    /// starting at 1.
    pub async fn next_client_id(&self) -> Result<u64> {
        let row = sqlx::query("SELECT MAX(client_id) AS m FROM clients WHERE client_id >= 0")
            .fetch_one(&self.pool)
            .await
            .map_err(db_err("choosing a client id"))?;
        let max: Option<i64> = row.try_get("m").map_err(db_err("choosing a client id"))?;
        match max {
            None => Ok(1),
            Some(m) => m.checked_add(1).map(|n| n as u64).ok_or_else(|| {
                Error::Config("no client id left below 2^63; give client_id".into())
            }),
        }
    }

    /// One client.
    pub async fn client(&self, client_id: u64) -> Result<Option<ClientRow>> {
        let row = sqlx::query(
            "SELECT client_id, name, created_at, revoked_at, cert_sha256 FROM clients WHERE client_id = $1",
        )
        .bind(client_id as i64)
        .fetch_optional(&self.pool)
        .await
        .map_err(db_err("reading a client"))?;
        row.as_ref().map(client_row).transpose()
    }

    /// Every client, by id.
    pub async fn clients(&self) -> Result<Vec<ClientRow>> {
        let rows = sqlx::query(
            "SELECT client_id, name, created_at, revoked_at, cert_sha256 FROM clients ORDER BY client_id",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(db_err("listing clients"))?;
        rows.iter().map(client_row).collect()
    }

    /// Revokes a client and every token of it; `false` when there is no such client.
    pub async fn revoke_client(&self, client_id: u64) -> Result<bool> {
        let now = now_ms();
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(db_err("revoking a client"))?;
        let res = sqlx::query(
            "UPDATE clients SET revoked_at = COALESCE(revoked_at, $1) WHERE client_id = $2",
        )
        .bind(now)
        .bind(client_id as i64)
        .execute(&mut *tx)
        .await
        .map_err(db_err("revoking a client"))?;
        sqlx::query("UPDATE tokens SET revoked_at = COALESCE(revoked_at, $1) WHERE client_id = $2")
            .bind(now)
            .bind(client_id as i64)
            .execute(&mut *tx)
            .await
            .map_err(db_err("revoking a client's tokens"))?;
        tx.commit().await.map_err(db_err("revoking a client"))?;
        Ok(res.rows_affected() > 0)
    }

    /// Ids of revoked clients.
    pub async fn revoked_clients(&self) -> Result<Vec<u64>> {
        Ok(self
            .clients()
            .await?
            .into_iter()
            .filter(|c| c.revoked_at.is_some())
            .map(|c| c.client_id)
            .collect())
    }

    // ------------------------------------------------------------------ jobs

    /// Records a job.
    pub async fn insert_job(&self, row: &JobRow) -> Result<()> {
        sqlx::query(
            "INSERT INTO jobs (id, name, owner, spec, created_at) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&row.id)
        .bind(&row.name)
        .bind(&row.owner)
        .bind(&row.spec)
        .bind(row.created_at)
        .execute(&self.pool)
        .await
        .map_err(db_err("recording a job"))?;
        Ok(())
    }

    /// Forgets a job the FL server refused.
    pub async fn delete_job(&self, id: &str) -> Result<()> {
        sqlx::query("DELETE FROM jobs WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(db_err("removing a job"))?;
        Ok(())
    }

    /// One job.
    pub async fn job(&self, id: &str) -> Result<Option<JobRow>> {
        let row = sqlx::query("SELECT id, name, owner, spec, created_at FROM jobs WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(db_err("reading a job"))?;
        row.as_ref().map(job_row).transpose()
    }

    /// Jobs, newest first, at most `limit`.
    pub async fn jobs(&self, limit: i64) -> Result<Vec<JobRow>> {
        let rows = sqlx::query(
            "SELECT id, name, owner, spec, created_at FROM jobs ORDER BY created_at DESC, id DESC LIMIT $1",
        )
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .map_err(db_err("listing jobs"))?;
        rows.iter().map(job_row).collect()
    }

    // ------------------------------------------------------------------ audit

    /// Appends an entry to the audit chain and returns it.
    pub async fn audit(
        &self,
        actor: &str,
        action: &str,
        target: &str,
        outcome: &str,
        detail: &str,
    ) -> Result<Entry> {
        let _guard = self.audit_lock.lock().await;
        // Another gateway on the same database may take the next `seq` first: retry on it.
        for _ in 0..20 {
            let last = sqlx::query("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1")
                .fetch_optional(&self.pool)
                .await
                .map_err(db_err("reading the audit chain's head"))?;
            let (prev_seq, prev_hash) = match last {
                Some(r) => (
                    r.try_get::<i64, _>("seq").map_err(db_err("audit head"))?,
                    r.try_get::<String, _>("hash")
                        .map_err(db_err("audit head"))?,
                ),
                None => (0, audit::GENESIS.to_string()),
            };
            let seq = prev_seq
                .checked_add(1)
                .ok_or_else(|| Error::Database("the audit log is full (seq overflow)".into()))?;
            let entry = Entry::new(
                seq,
                now_ms(),
                actor,
                action,
                target,
                outcome,
                detail,
                &prev_hash,
            );
            let res = sqlx::query(
                "INSERT INTO audit (seq, at, actor, action, target, outcome, detail, prev_hash, hash) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            )
            .bind(entry.seq)
            .bind(entry.at)
            .bind(&entry.actor)
            .bind(&entry.action)
            .bind(&entry.target)
            .bind(&entry.outcome)
            .bind(&entry.detail)
            .bind(&entry.prev_hash)
            .bind(&entry.hash)
            .execute(&self.pool)
            .await;
            match res {
                Ok(_) => return Ok(entry),
                Err(e) if is_conflict(&e) => continue,
                Err(e) => return Err(db_err("appending to the audit log")(e)),
            }
        }
        Err(Error::Database(
            "appending to the audit log: too much contention".into(),
        ))
    }

    /// Audit entries with `seq > after`, oldest first, at most `limit`, optionally of one
    /// action.
    pub async fn audit_entries(
        &self,
        after: i64,
        limit: i64,
        action: Option<&str>,
    ) -> Result<Vec<Entry>> {
        const BY_ACTION: &str = "SELECT seq, at, actor, action, target, outcome, detail, prev_hash, hash \
             FROM audit WHERE seq > $1 AND action = $2 ORDER BY seq LIMIT $3";
        const ALL: &str = "SELECT seq, at, actor, action, target, outcome, detail, prev_hash, hash \
             FROM audit WHERE seq > $1 ORDER BY seq LIMIT $2";
        let rows = match action {
            Some(a) => sqlx::query(BY_ACTION).bind(after).bind(a).bind(limit),
            None => sqlx::query(ALL).bind(after).bind(limit),
        }
        .fetch_all(&self.pool)
        .await
        .map_err(db_err("reading the audit log"))?;
        rows.iter().map(audit_row).collect()
    }

    /// The newest `limit` audit entries, oldest first.
    pub async fn audit_tail(&self, limit: i64) -> Result<Vec<Entry>> {
        let rows = sqlx::query(
            "SELECT seq, at, actor, action, target, outcome, detail, prev_hash, hash FROM audit ORDER BY seq DESC LIMIT $1",
        )
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .map_err(db_err("reading the audit log"))?;
        let mut v: Vec<Entry> = rows.iter().map(audit_row).collect::<Result<_>>()?;
        v.reverse();
        Ok(v)
    }

    /// Walks the whole chain in pages; see [`audit::Verifier`].
    pub async fn verify_audit(&self) -> Result<audit::Report> {
        let mut verifier = audit::Verifier::default();
        let mut after = 0;
        loop {
            let page = self.audit_entries(after, 1000, None).await?;
            let Some(last) = page.last() else { break };
            after = last.seq;
            for e in &page {
                verifier.push(e);
            }
        }
        Ok(verifier.finish())
    }

    /// Runs a raw statement (tests use it to tamper with stored entries).
    #[doc(hidden)]
    pub async fn execute_raw(&self, sql: &str) -> Result<u64> {
        Ok(sqlx::query(sql)
            .execute(&self.pool)
            .await
            .map_err(db_err("statement"))?
            .rows_affected())
    }
}

/// A database error without the connection URL (which can carry a password).
fn redact(e: &sqlx::Error) -> String {
    match e {
        sqlx::Error::Configuration(_) => "invalid database URL".into(),
        other => other.to_string(),
    }
}
