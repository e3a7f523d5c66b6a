//! Where hooks, attempts, failure counts and pending retries live: SQLite (one file, the
//! default) or PostgreSQL (shared by the nodes of a cluster), through sqlx's `Any` driver so
//! that every query is written once. The schema is versioned in `migrations/` and applied at
//! start; the SQL is portable (TEXT and BIGINT only, `$n` parameters, `ON CONFLICT DO NOTHING`).

use std::borrow::Cow;
use std::time::Duration;

use serde_json::{Map, Value};
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::{AnyPool, Row as _};

use super::hook::Hook;

/// The schema, in order. Never edit a released migration: add the next one.
const MIGRATIONS: &[(i64, &str, &str)] = &[(
    1,
    "webhooks",
    include_str!("../../migrations/0001_webhooks.sql"),
)];

/// Which database a `webhooks_db` value names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    Sqlite(String),
    Postgres(String),
}

impl Backend {
    /// `postgres://..` / `postgresql://..`, `sqlite:..`, or a file path (SQLite).
    pub fn parse(value: &str) -> Result<Backend, &'static str> {
        if value.is_empty() {
            return Err("expected a file path, sqlite:PATH or postgres://...");
        }
        if value.starts_with("postgres://") || value.starts_with("postgresql://") {
            return Ok(Backend::Postgres(value.to_string()));
        }
        let path = value
            .strip_prefix("sqlite://")
            .or_else(|| value.strip_prefix("sqlite:"))
            .unwrap_or(value);
        if path.is_empty() || path.contains('?') {
            return Err("expected a file path, sqlite:PATH or postgres://...");
        }
        Ok(Backend::Sqlite(path.to_string()))
    }

    /// For logs: the file, or the PostgreSQL URL without its password.
    pub fn describe(&self) -> String {
        match self {
            Backend::Sqlite(path) => format!("SQLite {path}"),
            Backend::Postgres(url) => format!("PostgreSQL {}", crate::ingest::redact_url(url)),
        }
    }
}

/// Reaches the database without changing it (for `check-config`): PostgreSQL must accept a
/// connection and a query; a SQLite file must open read-only if it exists, or its directory must
/// be writable so that `serve` can create it.
pub async fn reach(backend: &Backend) -> Result<String, String> {
    use sqlx::Connection as _;
    sqlx::any::install_default_drivers();
    let url = match backend {
        Backend::Postgres(url) => url.clone(),
        Backend::Sqlite(path) => {
            let file = std::path::Path::new(path);
            if !file.exists() {
                let dir = match file.parent() {
                    Some(dir) if !dir.as_os_str().is_empty() => dir,
                    _ => std::path::Path::new("."),
                };
                let probe = dir.join(format!(".horizon-check-{}", std::process::id()));
                return match std::fs::File::create(&probe) {
                    Ok(_) => {
                        let _ = std::fs::remove_file(&probe);
                        Ok(format!("{path} does not exist yet; serve will create it"))
                    }
                    Err(e) => Err(format!("cannot create {path}: {e}")),
                };
            }
            format!("sqlite://{path}?mode=ro")
        }
    };
    let mut conn = sqlx::AnyConnection::connect(&url)
        .await
        .map_err(|e| e.to_string())?;
    let hooks: Result<i64, _> = sqlx::query_scalar("SELECT COUNT(*) FROM webhooks")
        .fetch_one(&mut conn)
        .await;
    let _ = conn.close().await;
    Ok(match hooks {
        Ok(n) => format!("reachable, {n} hooks"),
        Err(_) => "reachable, no schema yet (serve creates it)".to_string(),
    })
}

/// One stored hook row.
#[derive(Debug, Clone)]
pub struct StoredHook {
    pub id: String,
    pub account_id: String,
    pub doc: Map<String, Value>,
    pub enabled: bool,
    pub disable_reason: Option<String>,
}

impl StoredHook {
    pub fn hook(&self) -> Option<Hook> {
        Hook::from_doc(
            &self.id,
            &self.account_id,
            &self.doc,
            self.enabled,
            self.disable_reason.clone(),
        )
    }
}

/// A delivery waiting for its next attempt.
#[derive(Debug, Clone)]
pub struct Job {
    /// The delivery id (`webhook-id`), stable across retries.
    pub id: String,
    pub hook_id: String,
    pub hook_event: String,
    pub event_id: Option<String>,
    pub payload: String,
    /// Attempts made so far.
    pub tries: u32,
    pub due_ms: i64,
}

/// One attempt, for the log.
#[derive(Debug, Clone)]
pub struct Attempt {
    pub id: String,
    pub account_id: String,
    pub hook_id: String,
    pub created_ms: i64,
    pub doc: String,
}

#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    pub backend: Backend,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

impl Store {
    /// Opens (creating a SQLite file if needed) and migrates.
    pub async fn open(backend: Backend) -> Result<Store, String> {
        sqlx::any::install_default_drivers();
        let (url, connections) = match &backend {
            Backend::Sqlite(path) => (format!("sqlite://{path}?mode=rwc"), 4),
            Backend::Postgres(url) => (url.clone(), 8),
        };
        let sqlite = matches!(backend, Backend::Sqlite(_));
        let pool = AnyPoolOptions::new()
            .max_connections(connections)
            .acquire_timeout(Duration::from_secs(10))
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if sqlite {
                        // One writer at a time, readers alongside; a busy writer is waited
                        // for rather than failed.
                        sqlx::query("PRAGMA journal_mode=WAL")
                            .execute(&mut *conn)
                            .await?;
                        sqlx::query("PRAGMA synchronous=NORMAL")
                            .execute(&mut *conn)
                            .await?;
                        sqlx::query("PRAGMA busy_timeout=10000")
                            .execute(&mut *conn)
                            .await?;
                    }
                    Ok(())
                })
            })
            .connect(&url)
            .await
            .map_err(|e| format!("cannot open {}: {e}", backend.describe()))?;
        let migrator = Migrator {
            migrations: Cow::Owned(
                MIGRATIONS
                    .iter()
                    .map(|(version, name, sql)| {
                        Migration::new(
                            *version,
                            Cow::Borrowed(*name),
                            MigrationType::Simple,
                            Cow::Borrowed(*sql),
                            false,
                        )
                    })
                    .collect(),
            ),
            ignore_missing: false,
            locking: true,
            no_tx: false,
        };
        migrator
            .run(&pool)
            .await
            .map_err(|e| format!("cannot migrate {}: {e}", backend.describe()))?;
        Ok(Store { pool, backend })
    }

    fn hook_row(row: &AnyRow) -> Result<StoredHook, sqlx::Error> {
        let doc: String = row.try_get("doc")?;
        Ok(StoredHook {
            id: row.try_get("id")?,
            account_id: row.try_get("account_id")?,
            doc: serde_json::from_str(&doc).unwrap_or_default(),
            enabled: row.try_get::<i64, _>("enabled")? != 0,
            disable_reason: row.try_get("disable_reason")?,
        })
    }

    pub async fn all_hooks(&self) -> Result<Vec<StoredHook>, sqlx::Error> {
        sqlx::query("SELECT id, account_id, doc, enabled, disable_reason FROM webhooks")
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(Store::hook_row)
            .collect()
    }

    pub async fn account_hooks(&self, account: &str) -> Result<Vec<StoredHook>, sqlx::Error> {
        sqlx::query(
            "SELECT id, account_id, doc, enabled, disable_reason FROM webhooks \
             WHERE account_id = $1 ORDER BY created_ms, id",
        )
        .bind(account)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(Store::hook_row)
        .collect()
    }

    pub async fn count_hooks(&self, account: &str) -> Result<i64, sqlx::Error> {
        sqlx::query("SELECT COUNT(*) AS n FROM webhooks WHERE account_id = $1")
            .bind(account)
            .fetch_one(&self.pool)
            .await?
            .try_get("n")
    }

    pub async fn hook(&self, account: &str, id: &str) -> Result<Option<StoredHook>, sqlx::Error> {
        sqlx::query(
            "SELECT id, account_id, doc, enabled, disable_reason FROM webhooks \
             WHERE account_id = $1 AND id = $2",
        )
        .bind(account)
        .bind(id)
        .fetch_optional(&self.pool)
        .await?
        .as_ref()
        .map(Store::hook_row)
        .transpose()
    }

    pub async fn insert_hook(&self, hook: &StoredHook) -> Result<(), sqlx::Error> {
        let now = now_ms();
        sqlx::query(
            "INSERT INTO webhooks (id, account_id, doc, enabled, disable_reason, created_ms, modified_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&hook.id)
        .bind(&hook.account_id)
        .bind(Value::Object(hook.doc.clone()).to_string())
        .bind(hook.enabled as i64)
        .bind(hook.disable_reason.clone())
        .bind(now)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Replaces a hook's document and state; false when there is no such hook.
    pub async fn update_hook(&self, hook: &StoredHook) -> Result<bool, sqlx::Error> {
        let done = sqlx::query(
            "UPDATE webhooks SET doc = $1, enabled = $2, disable_reason = $3, modified_ms = $4 \
             WHERE account_id = $5 AND id = $6",
        )
        .bind(Value::Object(hook.doc.clone()).to_string())
        .bind(hook.enabled as i64)
        .bind(hook.disable_reason.clone())
        .bind(now_ms())
        .bind(&hook.account_id)
        .bind(&hook.id)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Deletes a hook with its pending retries and failure counts; false when there is none.
    pub async fn delete_hook(&self, account: &str, id: &str) -> Result<bool, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        let done = sqlx::query("DELETE FROM webhooks WHERE account_id = $1 AND id = $2")
            .bind(account)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM webhook_jobs WHERE hook_id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM webhook_failures WHERE hook_id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(done.rows_affected() == 1)
    }

    /// Re-enables the auto-disabled hooks of `accounts`; returns how many.
    pub async fn reenable(&self, accounts: &[String]) -> Result<u64, sqlx::Error> {
        let mut total = 0;
        let mut tx = self.pool.begin().await?;
        for account in accounts {
            let ids: Vec<String> = sqlx::query(
                "SELECT id FROM webhooks WHERE account_id = $1 AND enabled = 0 \
                 AND disable_reason IS NOT NULL",
            )
            .bind(account)
            .fetch_all(&mut *tx)
            .await?
            .iter()
            .map(|r| r.try_get("id"))
            .collect::<Result<_, _>>()?;
            for id in ids {
                sqlx::query(
                    "UPDATE webhooks SET enabled = 1, disable_reason = NULL, modified_ms = $1 \
                     WHERE id = $2",
                )
                .bind(now_ms())
                .bind(&id)
                .execute(&mut *tx)
                .await?;
                sqlx::query("DELETE FROM webhook_failures WHERE hook_id = $1")
                    .bind(&id)
                    .execute(&mut *tx)
                    .await?;
                total += 1;
            }
        }
        tx.commit().await?;
        Ok(total)
    }

    /// Counts a failed attempt of `hook_id`; when the failures within `window` reach
    /// `threshold`, disables the hook (once, whichever node gets there first) and returns true.
    pub async fn count_failure(
        &self,
        hook_id: &str,
        threshold: u32,
        window: Duration,
        reason: &str,
    ) -> Result<bool, sqlx::Error> {
        let now = now_ms();
        let since = now - window.as_millis() as i64;
        sqlx::query("INSERT INTO webhook_failures (hook_id, at_ms) VALUES ($1, $2)")
            .bind(hook_id)
            .bind(now)
            .execute(&self.pool)
            .await?;
        let count: i64 = sqlx::query(
            "SELECT COUNT(*) AS n FROM webhook_failures WHERE hook_id = $1 AND at_ms > $2",
        )
        .bind(hook_id)
        .bind(since)
        .fetch_one(&self.pool)
        .await?
        .try_get("n")?;
        if count < threshold as i64 {
            return Ok(false);
        }
        let done = sqlx::query(
            "UPDATE webhooks SET enabled = 0, disable_reason = $1, modified_ms = $2 \
             WHERE id = $3 AND enabled = 1",
        )
        .bind(reason)
        .bind(now)
        .bind(hook_id)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Forgets a hook's counted failures (after a success, Kazoo's disabler starts over).
    pub async fn clear_failures(&self, hook_id: &str) -> Result<(), sqlx::Error> {
        sqlx::query("DELETE FROM webhook_failures WHERE hook_id = $1")
            .bind(hook_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Saves deliveries to retry and removes finished ones, in one transaction. A saved delivery
    /// id that exists already is updated (its tries and due time), and its lease released.
    pub async fn apply_jobs(&self, saves: &[Job], deletes: &[String]) -> Result<(), sqlx::Error> {
        if saves.is_empty() && deletes.is_empty() {
            return Ok(());
        }
        let now = now_ms();
        let mut tx = self.pool.begin().await?;
        for job in saves {
            sqlx::query(
                "INSERT INTO webhook_jobs (id, hook_id, hook_event, event_id, payload, tries, due_ms, lease_ms, created_ms) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, 0, $8) \
                 ON CONFLICT (id) DO UPDATE SET tries = excluded.tries, due_ms = excluded.due_ms, lease_ms = 0, claim = NULL",
            )
            .bind(&job.id)
            .bind(&job.hook_id)
            .bind(&job.hook_event)
            .bind(job.event_id.clone())
            .bind(&job.payload)
            .bind(job.tries as i64)
            .bind(job.due_ms)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        for id in deletes {
            sqlx::query("DELETE FROM webhook_jobs WHERE id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await
    }

    /// Claims up to `limit` due deliveries for `lease`: another node will not take them before
    /// the lease ends, and a node that dies mid-delivery leaves them to be taken again. One
    /// statement claims them all (on PostgreSQL a row another node claimed meanwhile is
    /// re-checked and skipped); the claim token then reads back exactly this node's rows.
    pub async fn claim_due(&self, limit: i64, lease: Duration) -> Result<Vec<Job>, sqlx::Error> {
        let now = now_ms();
        let claim = crate::ids::random_hex(16);
        let done = sqlx::query(
            "UPDATE webhook_jobs SET lease_ms = $1, claim = $2 \
             WHERE lease_ms <= $3 AND due_ms <= $3 AND id IN \
             (SELECT id FROM webhook_jobs WHERE due_ms <= $3 AND lease_ms <= $3 ORDER BY due_ms LIMIT $4)",
        )
        .bind(now + lease.as_millis() as i64)
        .bind(&claim)
        .bind(now)
        .bind(limit)
        .execute(&self.pool)
        .await?;
        if done.rows_affected() == 0 {
            return Ok(Vec::new());
        }
        let rows = sqlx::query(
            "SELECT id, hook_id, hook_event, event_id, payload, tries, due_ms FROM webhook_jobs \
             WHERE claim = $1",
        )
        .bind(&claim)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(Job {
                    id: row.try_get("id")?,
                    hook_id: row.try_get("hook_id")?,
                    hook_event: row.try_get("hook_event")?,
                    event_id: row.try_get("event_id")?,
                    payload: row.try_get("payload")?,
                    tries: row.try_get::<i64, _>("tries")?.max(0) as u32,
                    due_ms: row.try_get("due_ms")?,
                })
            })
            .collect()
    }

    pub async fn job_exists(&self, id: &str) -> Result<bool, sqlx::Error> {
        Ok(sqlx::query("SELECT id FROM webhook_jobs WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .is_some())
    }

    /// The soonest due time of a waiting delivery, if any.
    pub async fn next_due(&self) -> Result<Option<i64>, sqlx::Error> {
        let row = sqlx::query("SELECT MIN(due_ms) AS due FROM webhook_jobs WHERE lease_ms <= $1")
            .bind(now_ms())
            .fetch_one(&self.pool)
            .await?;
        row.try_get::<Option<i64>, _>("due")
    }

    pub async fn pending_jobs(&self) -> Result<i64, sqlx::Error> {
        sqlx::query("SELECT COUNT(*) AS n FROM webhook_jobs")
            .fetch_one(&self.pool)
            .await?
            .try_get("n")
    }

    /// Appends attempts to the log in one transaction.
    pub async fn log_attempts(&self, attempts: &[Attempt]) -> Result<(), sqlx::Error> {
        if attempts.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool.begin().await?;
        for attempt in attempts {
            sqlx::query(
                "INSERT INTO webhook_attempts (id, account_id, hook_id, created_ms, doc) \
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT (id) DO NOTHING",
            )
            .bind(&attempt.id)
            .bind(&attempt.account_id)
            .bind(&attempt.hook_id)
            .bind(attempt.created_ms)
            .bind(&attempt.doc)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await
    }

    /// One page of attempts, newest first: of an account (every hook), or of one hook.
    /// `before` is the paging key (`created_ms`, `id`) of the last row of the previous page.
    pub async fn attempts(
        &self,
        account: &str,
        hook_id: Option<&str>,
        from_ms: i64,
        to_ms: i64,
        before: Option<(i64, String)>,
        limit: i64,
    ) -> Result<Vec<Attempt>, sqlx::Error> {
        let (before_ms, before_id) = before.unwrap_or((i64::MAX, String::new()));
        let rows = sqlx::query(
            "SELECT id, account_id, hook_id, created_ms, doc FROM webhook_attempts \
             WHERE account_id = $1 AND ($2 = '' OR hook_id = $2) \
             AND created_ms >= $3 AND created_ms <= $4 \
             AND (created_ms < $5 OR (created_ms = $5 AND ($6 = '' OR id < $6))) \
             ORDER BY created_ms DESC, id DESC LIMIT $7",
        )
        .bind(account)
        .bind(hook_id.unwrap_or(""))
        .bind(from_ms)
        .bind(to_ms)
        .bind(before_ms)
        .bind(&before_id)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(Attempt {
                    id: row.try_get("id")?,
                    account_id: row.try_get("account_id")?,
                    hook_id: row.try_get("hook_id")?,
                    created_ms: row.try_get("created_ms")?,
                    doc: row.try_get("doc")?,
                })
            })
            .collect()
    }

    /// Drops attempts older than `retention` and failures older than `window`.
    pub async fn prune(&self, retention: Duration, window: Duration) -> Result<(), sqlx::Error> {
        let now = now_ms();
        sqlx::query("DELETE FROM webhook_attempts WHERE created_ms < $1")
            .bind(now - retention.as_millis() as i64)
            .execute(&self.pool)
            .await?;
        sqlx::query("DELETE FROM webhook_failures WHERE at_ms < $1")
            .bind(now - window.as_millis() as i64)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}

pub fn unix_ms() -> i64 {
    now_ms()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backends_are_named_by_their_values() {
        assert_eq!(
            Backend::parse("hooks.db"),
            Ok(Backend::Sqlite("hooks.db".into()))
        );
        assert_eq!(
            Backend::parse("sqlite:/tmp/x.db"),
            Ok(Backend::Sqlite("/tmp/x.db".into()))
        );
        assert!(matches!(
            Backend::parse("postgres://u@h/db"),
            Ok(Backend::Postgres(_))
        ));
        assert!(Backend::parse("").is_err());
    }
}
