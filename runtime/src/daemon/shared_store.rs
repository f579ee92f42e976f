//! The shared store (`--store postgres://...`, issue 15): PostgreSQL as the source of truth for deployed tasks
//! and their settings, tenants' egress allow-lists and secrets (each tenant's secrets file as it is at rest,
//! values sealed under the node's key, which every node of a cluster shares: the database never holds a value
//! in the clear), the state directory as each node's local copy. The only module that talks to the database.
//!
//! Every change takes the next value of one sequence (`taskcell_version`) as its version, in a transaction that
//! first takes one advisory lock, so that versions commit in the order they were taken and "everything after
//! version N" never skips a change that was still in flight. A deleted task stays as a row without a source (a
//! tombstone), so that a node catching up hears of the delete too. The transaction ends with a NOTIFY, which
//! PostgreSQL delivers at COMMIT.
//!
//! Two connections, each on a thread of its own and never on the event loop: the [`Writer`] (every change,
//! answered only once committed) and the [`Follower`] (LISTEN, plus a poll every [`POLL`] in case a notification
//! was lost, and a catch-up by version at every (re)connection), which applies what other nodes changed to the
//! local [`Store`] and records the last version applied in `<state-dir>/store-version` (with the database's id:
//! a database made anew or restored from a backup is followed again from version 0). Requests only ever read
//! the local store: a node whose database is gone keeps serving what it has, and refuses deploys.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use openssl::ssl::{SslConnector, SslMethod, SslVersion};
use postgres::config::{Host, SslMode};
use postgres::fallible_iterator::FallibleIterator;
use postgres::Client;
use postgres_openssl::MakeTlsConnector;

use super::metrics::StoreGauges;
use super::replace_file::{self, Durability};
use super::secrets::{self, FileWrite};
use super::store::{self, Store, StoreError, TaskSettings};

/// The channel every change is announced on (payload: its version).
const CHANNEL: &str = "taskcell_changes";
/// Held for the length of every writing transaction (and the schema's creation): see the module's doc.
const WRITE_LOCK: i64 = 0x7461_736b_6365_6c6c; // "taskcell"
/// How long a connection attempt may take: a deploy waits at most this long before its 503.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// The follower's poll when no notification comes (a lost one costs at most this).
pub const POLL: Duration = Duration::from_secs(2);
/// Changes read per query while catching up.
const BATCH: i64 = 500;
/// Where the last version applied locally is kept, in the state directory.
const VERSION_FILE: &str = "store-version";

const SCHEMA: &str = "
BEGIN;
SELECT pg_advisory_xact_lock(8386110886206860396);
CREATE SEQUENCE IF NOT EXISTS taskcell_version;
CREATE TABLE IF NOT EXISTS taskcell_database (id text NOT NULL);
INSERT INTO taskcell_database SELECT md5(random()::text || clock_timestamp()::text)
    WHERE NOT EXISTS (SELECT 1 FROM taskcell_database);
CREATE TABLE IF NOT EXISTS taskcell_tasks (
    tenant text NOT NULL,
    task text NOT NULL,
    source bytea,
    settings text NOT NULL DEFAULT '{}',
    version bigint NOT NULL,
    PRIMARY KEY (tenant, task)
);
CREATE INDEX IF NOT EXISTS taskcell_tasks_by_version ON taskcell_tasks (version);
CREATE TABLE IF NOT EXISTS taskcell_egress (
    tenant text PRIMARY KEY,
    allow text NOT NULL,
    version bigint NOT NULL
);
CREATE INDEX IF NOT EXISTS taskcell_egress_by_version ON taskcell_egress (version);
CREATE TABLE IF NOT EXISTS taskcell_secrets (
    tenant text PRIMARY KEY,
    sealed bytea,
    version bigint NOT NULL
);
CREATE INDEX IF NOT EXISTS taskcell_secrets_by_version ON taskcell_secrets (version);
COMMIT;
";

#[derive(Debug, thiserror::Error)]
pub enum SharedStoreError {
    #[error("the store is not a postgres:// or postgresql:// URL")]
    NotUrl,
    #[error("the store's URL is not valid")]
    Url(#[source] postgres::Error),
    #[error("connecting to the store")]
    Connect(#[source] postgres::Error),
    #[error("the store could not be reached less than a second ago")]
    Down,
    #[error("making the store's tables")]
    Schema(#[source] postgres::Error),
    #[error("writing {change} to the store")]
    Write {
        change: String,
        #[source]
        source: postgres::Error,
    },
    #[error("reading the store's changes after version {after}")]
    Changes {
        after: i64,
        #[source]
        source: postgres::Error,
    },
    #[error("listening for the store's changes")]
    Listen(#[source] postgres::Error),
    #[error("applying version {version} locally")]
    Apply {
        version: i64,
        #[source]
        source: StoreError,
    },
    #[error("the settings of version {version} are not valid")]
    BadSettings {
        version: i64,
        #[source]
        source: serde_json::Error,
    },
    #[error("the egress allow-list of version {version} is not valid")]
    BadEgress {
        version: i64,
        #[source]
        source: serde_json::Error,
    },
    #[error("applying version {version}'s secrets locally")]
    ApplySecrets {
        version: i64,
        #[source]
        source: super::secrets::SecretsError,
    },
    #[error("{op} {path}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("setting up TLS to the store (--store-ca {ca})")]
    Tls {
        ca: String,
        #[source]
        source: openssl::error::ErrorStack,
    },
    #[error("reading the state directory to import")]
    ImportRead(#[source] StoreError),
    #[error("reading the secrets to import")]
    ImportSecrets(#[source] super::secrets::SecretsError),
}

impl SharedStoreError {
    /// A change in the database that cannot be applied anywhere, as opposed to one this node failed to apply.
    fn bad_row(&self) -> bool {
        matches!(
            self,
            SharedStoreError::BadSettings { .. }
                | SharedStoreError::BadEgress { .. }
                | SharedStoreError::Apply { source: StoreError::BadName { .. }, .. }
        )
    }

    /// The database could not be reached or went away (as opposed to a change it refused).
    pub fn unreachable(&self) -> bool {
        match self {
            SharedStoreError::Connect(_) | SharedStoreError::Down => true,
            SharedStoreError::Write { source, .. } | SharedStoreError::Changes { source, .. } => lost(source),
            _ => false,
        }
    }
}

/// The connection is gone (closed, or never answered), or the server is shutting down or starting (SQLSTATE
/// classes 08, connection exception, and 57, operator intervention): not a refusal of the change itself.
fn lost(e: &postgres::Error) -> bool {
    match e.as_db_error() {
        None => true,
        Some(db) => e.is_closed() || db.code().code().starts_with("08") || db.code().code().starts_with("57"),
    }
}

/// `postgres://` or `postgresql://`, as libpq takes it (`?host=/dir` for a Unix socket).
pub fn parse_url(url: &str) -> Result<postgres::Config, SharedStoreError> {
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        // postgres::Config also takes "key=value" strings: the flag promises a URL, so only a URL.
        return Err(SharedStoreError::NotUrl);
    }
    let mut config = postgres::Config::from_str(url).map_err(SharedStoreError::Url)?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(CONNECT_TIMEOUT);
    }
    config.application_name("taskcell");
    Ok(config)
}

/// Where the store is and how to reach it: the URL's settings and a TLS connector, used as the URL's `sslmode`
/// says (`prefer`, the default, takes TLS where the server offers it; `require` refuses a server without it;
/// `disable`; never over a Unix socket). The server's certificate and host name are always verified, against
/// `--store-ca` or else the system's roots: `require` is libpq's `verify-full`.
#[derive(Clone)]
pub struct Database {
    config: postgres::Config,
    tls: MakeTlsConnector,
}

impl Database {
    pub fn new(url: &str, ca: Option<&Path>) -> Result<Database, SharedStoreError> {
        let config = parse_url(url)?;
        let tls_err = |source| SharedStoreError::Tls { ca: ca.map_or("none".into(), |c| c.display().to_string()), source };
        // SslConnector verifies the peer against the default paths; host names are checked by the adapter.
        let mut builder = SslConnector::builder(SslMethod::tls_client()).map_err(tls_err)?;
        builder.set_min_proto_version(Some(SslVersion::TLS1_2)).map_err(tls_err)?;
        if let Some(ca) = ca {
            builder.set_ca_file(ca).map_err(tls_err)?;
        }
        Ok(Database { config, tls: MakeTlsConnector::new(builder.build()) })
    }

    /// A database on another host reached without `sslmode=require` (a warning at start, not an error: a
    /// private network may be trusted).
    pub fn cleartext_risk(&self) -> Option<String> {
        let remote = self.config.get_hosts().iter().find_map(|h| match h {
            Host::Tcp(name) if !matches!(name.as_str(), "localhost" | "127.0.0.1" | "::1") => Some(name.clone()),
            _ => None,
        })?;
        (self.config.get_ssl_mode() != SslMode::Require).then(|| {
            format!("the store's host {remote} is not local and its URL lacks sslmode=require: a server without TLS is used in the clear")
        })
    }
}

fn connect(db: &Database) -> Result<Client, SharedStoreError> {
    let mut client = db.config.connect(db.tls.clone()).map_err(SharedStoreError::Connect)?;
    client.batch_execute(SCHEMA).map_err(SharedStoreError::Schema)?;
    Ok(client)
}

/// Every change, committed before it is answered. Used by the database thread alone.
pub struct Writer {
    db: Database,
    client: Option<Client>,
    /// When a connection last failed: for [`RETRY_AFTER`], changes are refused without waiting for another
    /// timeout, so that a burst of deploys while the database is away is answered at once.
    failed_at: Option<Instant>,
}

/// How long after a failed connection the writer tries again.
const RETRY_AFTER: Duration = Duration::from_secs(1);

impl Writer {
    pub fn new(db: Database) -> Writer {
        Writer { db, client: None, failed_at: None }
    }

    /// The connection, made again if the last one broke.
    fn client(&mut self) -> Result<&mut Client, SharedStoreError> {
        if self.client.as_ref().is_some_and(Client::is_closed) {
            self.client = None;
        }
        if self.client.is_none() {
            if self.failed_at.is_some_and(|at| at.elapsed() < RETRY_AFTER) {
                return Err(SharedStoreError::Down);
            }
            match connect(&self.db) {
                Ok(client) => {
                    self.client = Some(client);
                    self.failed_at = None;
                }
                Err(e) => {
                    self.failed_at = Some(Instant::now());
                    return Err(e);
                }
            }
        }
        Ok(self.client.as_mut().expect("connected just above"))
    }

    /// One change in one transaction under the writers' lock; `f` returns its answer and the version it took
    /// (None: nothing changed, nothing to announce).
    fn change<T, F>(&mut self, change: impl FnOnce() -> String, f: F) -> Result<T, SharedStoreError>
    where
        F: FnOnce(&mut postgres::Transaction<'_>) -> Result<(T, Option<i64>), postgres::Error>,
    {
        // A connection made before the server restarted fails only when used: then once more on a new one.
        let reused = self.client.as_ref().is_some_and(|c| !c.is_closed());
        let mut f = Some(f);
        let attempt = |me: &mut Writer, f: &mut Option<F>| -> Result<Option<T>, postgres::Error> {
            let Some(client) = me.client.as_mut() else { return Ok(None) };
            let mut tx = client.transaction()?;
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&WRITE_LOCK])?;
            let (answer, version) = (f.take().expect("run once past the lock"))(&mut tx)?;
            if let Some(version) = version {
                tx.execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &version.to_string()])?;
            }
            tx.commit()?;
            Ok(Some(answer))
        };
        self.client()?;
        let mut result = attempt(self, &mut f);
        // Retried only if it failed before the change itself ran (on a connection found dead): once the change
        // was sent, whether it committed is unknown, and the client is told so (503) rather than guessed for.
        if reused && f.is_some() && result.as_ref().is_err_and(lost) {
            self.client = None;
            self.client()?;
            result = attempt(self, &mut f);
        }
        let result = match result {
            Ok(answer) => Ok(answer.expect("connected just above")),
            Err(source) => Err(SharedStoreError::Write { change: change(), source }),
        };
        self.forget_broken(&result);
        result
    }

    /// Store a task's new version; `Ok(true)` if the task did not exist before.
    pub fn put_task(&mut self, tenant: &str, task: &str, source: &[u8], settings: &TaskSettings) -> Result<bool, SharedStoreError> {
        let settings = serde_json::to_string(settings).expect("settings serialize");
        self.change(
            || format!("task {tenant}/{task}"),
            |tx| {
                let existed = tx
                    .query_opt("SELECT source IS NOT NULL FROM taskcell_tasks WHERE tenant = $1 AND task = $2", &[&tenant, &task])?
                    .is_some_and(|row| row.get::<_, bool>(0));
                let row = tx.query_one(
                    "INSERT INTO taskcell_tasks (tenant, task, source, settings, version)
                     VALUES ($1, $2, $3, $4, nextval('taskcell_version'))
                     ON CONFLICT (tenant, task) DO UPDATE
                     SET source = EXCLUDED.source, settings = EXCLUDED.settings, version = EXCLUDED.version
                     RETURNING version",
                    &[&tenant, &task, &source, &settings],
                )?;
                Ok((!existed, Some(row.get(0))))
            },
        )
    }

    /// Delete a task (leaving its tombstone); `Ok(false)` if it did not exist.
    pub fn delete_task(&mut self, tenant: &str, task: &str) -> Result<bool, SharedStoreError> {
        self.change(
            || format!("the delete of task {tenant}/{task}"),
            |tx| {
                let row = tx.query_opt(
                    "UPDATE taskcell_tasks SET source = NULL, settings = '{}', version = nextval('taskcell_version')
                     WHERE tenant = $1 AND task = $2 AND source IS NOT NULL RETURNING version",
                    &[&tenant, &task],
                )?;
                Ok(match row {
                    Some(row) => (true, Some(row.get(0))),
                    None => (false, None),
                })
            },
        )
    }

    /// Replace a tenant's egress allow-list.
    pub fn put_egress(&mut self, tenant: &str, allow: &[String]) -> Result<(), SharedStoreError> {
        let allow = serde_json::to_string(allow).expect("strings serialize");
        self.change(
            || format!("the egress allow-list of {tenant}"),
            |tx| {
                let row = tx.query_one(
                    "INSERT INTO taskcell_egress (tenant, allow, version) VALUES ($1, $2, nextval('taskcell_version'))
                     ON CONFLICT (tenant) DO UPDATE SET allow = EXCLUDED.allow, version = EXCLUDED.version
                     RETURNING version",
                    &[&tenant, &allow],
                )?;
                Ok(((), Some(row.get(0))))
            },
        )
    }

    /// Replace a tenant's secrets file (sealed values only; None: it has none left).
    pub fn put_secrets(&mut self, file: &FileWrite) -> Result<(), SharedStoreError> {
        self.change(
            || format!("the secrets of {}", file.tenant),
            |tx| {
                let row = tx.query_one(
                    "INSERT INTO taskcell_secrets (tenant, sealed, version) VALUES ($1, $2, nextval('taskcell_version'))
                     ON CONFLICT (tenant) DO UPDATE SET sealed = EXCLUDED.sealed, version = EXCLUDED.version
                     RETURNING version",
                    &[&file.tenant, &file.contents],
                )?;
                Ok(((), Some(row.get(0))))
            },
        )
    }

    fn forget_broken<T>(&mut self, result: &Result<T, SharedStoreError>) {
        if result.as_ref().is_err_and(SharedStoreError::unreachable) {
            self.client = None;
        }
    }
}

/// A change another node (or this one) made, now applied to the local state directory: what the event loop
/// must take in.
pub enum Applied {
    /// A task's source or settings changed, or it was deleted: its code cache is stale.
    Task { tenant: String, task: String },
    /// A tenant's allow-list, in force from now.
    Egress { tenant: String, allow: Vec<String> },
    /// A tenant's secrets file as it now is (sealed values).
    Secrets(FileWrite),
}

/// What `/v1/health` tells of the follower (kept by it, read by the loop).
#[derive(Default)]
pub struct Status {
    /// Its connection is up and listening.
    pub connected: AtomicBool,
    /// The last version applied locally.
    pub version: AtomicI64,
    /// Changes this node committed to the database, and those it could not (answered 503 or 500).
    pub committed: AtomicU64,
    pub refused: AtomicU64,
    /// Changes read from the database and applied locally (every node's, this one's own included).
    pub followed: AtomicU64,
}

impl Status {
    pub fn gauges(&self) -> StoreGauges {
        StoreGauges {
            connected: self.connected.load(Ordering::Relaxed),
            version: self.version.load(Ordering::Relaxed).max(0) as u64,
            committed: self.committed.load(Ordering::Relaxed),
            refused: self.refused.load(Ordering::Relaxed),
            followed: self.followed.load(Ordering::Relaxed),
        }
    }

    pub fn health(&self) -> serde_json::Value {
        serde_json::json!({
            "kind": "postgres",
            "connected": self.connected.load(Ordering::Relaxed),
            "version": self.version.load(Ordering::Relaxed),
        })
    }
}

/// Keeps the local store up to date with the database.
pub struct Follower {
    db: Database,
    store: Arc<Store>,
    secrets_dir: PathBuf,
    version_file: PathBuf,
    /// The database the versions are of (its `taskcell_database` row, made at random with its tables).
    database: String,
    /// The last version applied locally.
    pub version: i64,
    pub status: Arc<Status>,
}

impl Follower {
    pub fn new(db: Database, store: Arc<Store>, state_dir: &Path) -> Follower {
        let version_file = state_dir.join(VERSION_FILE);
        // "DATABASE-ID VERSION"; anything else is version 0 of no database.
        let text = std::fs::read_to_string(&version_file).unwrap_or_default();
        let (database, version) = match text.split_whitespace().collect::<Vec<_>>()[..] {
            [id, version] => (id.to_string(), version.parse().unwrap_or(0)),
            _ => (String::new(), 0),
        };
        let status = Arc::new(Status { version: AtomicI64::new(version), ..Status::default() });
        Follower { db, store, secrets_dir: secrets::dir_in(state_dir), version_file, database, version, status }
    }

    pub fn connect(&self) -> Result<Client, SharedStoreError> {
        let mut client = connect(&self.db)?;
        client.batch_execute(&format!("LISTEN {CHANNEL}")).map_err(SharedStoreError::Listen)?;
        self.status.connected.store(true, Ordering::Relaxed);
        Ok(client)
    }

    /// Versions count in one database: one made anew (another id) or restored from a backup (behind this node)
    /// would never send its changes. Then start over from version 0 (what the node has is applied again, no harm).
    pub fn check_database(&mut self, client: &mut Client) -> Result<(), SharedStoreError> {
        let after = self.version;
        let row = client
            .query_one("SELECT (SELECT id FROM taskcell_database LIMIT 1), last_value, is_called FROM taskcell_version", &[])
            .map_err(|source| SharedStoreError::Changes { after, source })?;
        let database: String = row.get(0);
        let last: i64 = if row.get::<_, bool>(2) { row.get(1) } else { 0 };
        if database != self.database || last < self.version {
            if self.version > 0 {
                eprintln!(
                    "taskcell: store: database {database} at version {last} is not the one this node followed to version {after}: applying everything again"
                );
            }
            self.database = database;
            self.version = 0;
        }
        Ok(())
    }

    /// Apply every change after the last one applied; each applied change is passed to `applied`.
    pub fn catch_up(&mut self, client: &mut Client, applied: &mut dyn FnMut(Applied)) -> Result<usize, SharedStoreError> {
        let mut count = 0;
        loop {
            let after = self.version;
            let rows = client
                .query(
                    "SELECT version, 'task', tenant, task, source, settings FROM taskcell_tasks WHERE version > $1
                     UNION ALL
                     SELECT version, 'egress', tenant, '', convert_to(allow, 'UTF8'), '' FROM taskcell_egress WHERE version > $1
                     UNION ALL
                     SELECT version, 'secrets', tenant, '', sealed, '' FROM taskcell_secrets WHERE version > $1
                     ORDER BY 1 LIMIT $2",
                    &[&after, &BATCH],
                )
                .map_err(|source| SharedStoreError::Changes { after, source })?;
            if rows.is_empty() {
                return Ok(count);
            }
            for row in &rows {
                let version: i64 = row.get(0);
                let kind: &str = row.get(1);
                let tenant: String = row.get(2);
                let data: Option<Vec<u8>> = row.get(4);
                let change = (|| -> Result<Option<Applied>, SharedStoreError> {
                    Ok(match kind {
                        "task" => {
                            let task: String = row.get(3);
                            let settings: String = row.get(5);
                            self.apply_task(version, &tenant, &task, data.as_deref(), &settings)?.then_some(Applied::Task { tenant, task })
                        }
                        "egress" => {
                            let allow: Vec<String> = serde_json::from_slice(data.as_deref().unwrap_or(b"[]"))
                                .map_err(|source| SharedStoreError::BadEgress { version, source })?;
                            self.store.put_egress(&tenant, &allow).map_err(|source| SharedStoreError::Apply { version, source })?;
                            Some(Applied::Egress { tenant, allow })
                        }
                        _ => self.apply_secrets(version, FileWrite { tenant, contents: data })?,
                    })
                })();
                match change {
                    Ok(Some(change)) => applied(change),
                    Ok(None) => {}
                    // A row no node could have written (a bad name or shape) is passed over, or it would stop
                    // this node following for good; a local failure (a full disk) is retried from this version.
                    Err(e) if e.bad_row() => eprintln!("taskcell: store: {}; passed over", crate::error_chain(&e)),
                    Err(e) => return Err(e),
                }
                self.version = version;
                count += 1;
            }
            self.save_version()?;
            self.status.version.store(self.version, Ordering::Relaxed);
            self.status.followed.fetch_add(rows.len() as u64, Ordering::Relaxed);
        }
    }

    /// A tenant's secrets file to the local state directory, unless it is there already (this node's own change).
    fn apply_secrets(&self, version: i64, file: FileWrite) -> Result<Option<Applied>, SharedStoreError> {
        let local = |source| SharedStoreError::ApplySecrets { version, source };
        // The tenant's name becomes a file's name: checked here, whatever wrote the row.
        if !store::valid_name(&file.tenant) {
            return Ok(None);
        }
        if secrets::read_file(&self.secrets_dir, &file.tenant).map_err(local)?.contents == file.contents {
            return Ok(None);
        }
        secrets::write_file(&self.secrets_dir, &file).map_err(local)?;
        Ok(Some(Applied::Secrets(file)))
    }

    /// One task's change to the local store; `false` if it already had it (this node's own deploy, usually).
    fn apply_task(&self, version: i64, tenant: &str, task: &str, source: Option<&[u8]>, settings: &str) -> Result<bool, SharedStoreError> {
        let local = |source| SharedStoreError::Apply { version, source };
        let current = self.store.get(tenant, task).map_err(local)?;
        match source {
            Some(source) => {
                let settings: TaskSettings =
                    serde_json::from_str(settings).map_err(|source| SharedStoreError::BadSettings { version, source })?;
                let sha = store::sha256_hex(source);
                if current.is_some_and(|(info, _)| info.sha256 == sha && info.settings == settings) {
                    return Ok(false);
                }
                self.store.put_with(tenant, task, source, &settings).map_err(local)?;
                self.store.forget_code_cache(tenant, task);
                Ok(true)
            }
            None if current.is_none() => Ok(false),
            None => {
                self.store.delete(tenant, task).map_err(local)?;
                Ok(true)
            }
        }
    }

    fn save_version(&self) -> Result<(), SharedStoreError> {
        let tmp = self.version_file.with_extension("tmp");
        let line = format!("{} {}\n", self.database, self.version);
        // Not fsynced: a version file older than the tasks only makes a restart apply a few changes again.
        replace_file::replace(&self.version_file, &tmp, line.as_bytes(), Durability::Hint).map_err(|e| SharedStoreError::Io {
            op: e.step,
            path: e.path,
            source: e.source,
        })
    }

    /// The follower's life on its thread: connect, catch up, then wait for notifications (or the poll) and catch
    /// up again; on any failure, log it once, reconnect every second and catch up. Returns when `applied` says so.
    pub fn run(mut self, mut applied: impl FnMut(Applied) -> bool, mut client: Option<Client>) {
        let mut down_since_logged = false;
        let mut keep_going = true;
        while keep_going {
            let mut c = match client.take() {
                Some(c) => c,
                None => match self.connect() {
                    Ok(c) => c,
                    Err(e) => {
                        if !down_since_logged {
                            eprintln!("taskcell: store: {} (serving the local copy, retrying every second)", crate::error_chain(&e));
                            down_since_logged = true;
                        }
                        std::thread::sleep(Duration::from_secs(1));
                        continue;
                    }
                },
            };
            if down_since_logged {
                eprintln!("taskcell: store: connected again, catching up from version {}", self.version);
                down_since_logged = false;
            }
            let result = (|| -> Result<(), SharedStoreError> {
                self.check_database(&mut c)?;
                loop {
                    let mut stop = false;
                    self.catch_up(&mut c, &mut |a| stop |= !applied(a))?;
                    if stop {
                        keep_going = false;
                        return Ok(());
                    }
                    // Wait for one notification or the poll, then take whatever else has arrived.
                    c.notifications().timeout_iter(POLL).next().map_err(SharedStoreError::Listen)?;
                    while c.notifications().iter().next().map_err(SharedStoreError::Listen)?.is_some() {}
                }
            })();
            if let Err(e) = result {
                self.status.connected.store(false, Ordering::Relaxed);
                eprintln!("taskcell: store: {}", crate::error_chain(&e));
                down_since_logged = true;
                std::thread::sleep(Duration::from_secs(1));
            }
        }
    }
}

/// What `taskcell store-import` copied.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Imported {
    pub tasks: usize,
    pub egress_lists: usize,
    pub secrets_files: usize,
}

/// Copy one node's state directory into the shared store: every task with its settings, every allow-list and
/// every tenant's sealed secrets file, each committed and announced as a change through a node would be (a
/// task of the same name already there gets this version). Values stay sealed: the nodes that follow need the
/// key the directory's secrets were sealed under.
pub fn import(state_dir: &Path, db: Database, say: &mut dyn FnMut(String)) -> Result<Imported, SharedStoreError> {
    let store = Store::open(state_dir).map_err(SharedStoreError::ImportRead)?;
    let mut writer = Writer::new(db);
    let mut done = Imported::default();
    for tenant in store.tenants().map_err(SharedStoreError::ImportRead)? {
        for info in store.list(&tenant).map_err(SharedStoreError::ImportRead)? {
            let Some((info, source)) = store.get(&tenant, &info.task).map_err(SharedStoreError::ImportRead)? else { continue };
            writer.put_task(&tenant, &info.task, &source, &info.settings)?;
            say(format!("task {tenant}/{} ({} bytes, sha256 {})", info.task, info.size, info.sha256));
            done.tasks += 1;
        }
    }
    for (tenant, allow) in store.egress_lists().map_err(SharedStoreError::ImportRead)? {
        writer.put_egress(&tenant, &allow)?;
        say(format!("egress allow-list of {tenant} ({} entries)", allow.len()));
        done.egress_lists += 1;
    }
    let dir = secrets::dir_in(state_dir);
    for tenant in secrets::tenants_in(&dir).map_err(SharedStoreError::ImportSecrets)? {
        let file = secrets::read_file(&dir, &tenant).map_err(SharedStoreError::ImportSecrets)?;
        if file.contents.is_some() {
            writer.put_secrets(&file)?;
            say(format!("secrets of {tenant} (sealed)"));
            done.secrets_files += 1;
        }
    }
    Ok(done)
}

const IMPORT_USAGE: &str = "usage: taskcell store-import --state-dir DIR --store postgres://USER@HOST/DB [--store-ca FILE]

Copies a node's state directory (its tasks with their settings, egress allow-lists and sealed secrets) into the
shared store, once, when a single node becomes the first of many. Every node that follows the store needs the
secrets key this directory's secrets were sealed under.";

/// `taskcell store-import`.
pub fn import_main(raw: Vec<String>) -> std::process::ExitCode {
    use std::process::ExitCode;
    let names = ["--state-dir", "--store", "--store-ca"];
    let (state_dir, url, ca) = match crate::args::named_values("taskcell store-import", raw, &names, IMPORT_USAGE) {
        Ok(mut v) => (v[0].take(), v[1].take(), v[2].take()),
        Err(code) => return code,
    };
    let (Some(state_dir), Some(url)) = (state_dir, url) else {
        eprintln!("taskcell store-import: --state-dir and --store are required\n{IMPORT_USAGE}");
        return ExitCode::from(2);
    };
    let db = match Database::new(&url, ca.as_deref().map(Path::new)) {
        Ok(db) => db,
        Err(e) => {
            eprintln!("taskcell store-import: {}", crate::error_chain(&e));
            return ExitCode::from(2);
        }
    };
    if !Path::new(&state_dir).join("tasks").is_dir() {
        eprintln!("taskcell store-import: {state_dir} is not a state directory (no tasks/ in it)");
        return ExitCode::from(2);
    }
    match import(Path::new(&state_dir), db, &mut |line| println!("imported {line}")) {
        Ok(n) => {
            println!(
                "taskcell store-import: {} task(s), {} egress allow-list(s), {} secrets file(s) committed",
                n.tasks, n.egress_lists, n.secrets_files
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("taskcell store-import: {} (what was printed above is committed; running it again is safe)", crate::error_chain(&e));
            ExitCode::from(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_postgres_urls_are_taken() {
        assert!(parse_url("postgres://taskcell@127.0.0.1:5432/taskcell").is_ok());
        assert!(parse_url("postgresql://postgres@localhost/postgres?host=/tmp/pg").is_ok());
        assert!(parse_url("host=/tmp user=postgres").is_err());
        assert!(parse_url("mysql://x").is_err());
        assert!(SCHEMA.contains(&WRITE_LOCK.to_string()), "the schema takes the writers' lock");
        assert_eq!(parse_url("postgres://x@localhost/db").unwrap().get_connect_timeout(), Some(&CONNECT_TIMEOUT));
    }

    #[test]
    fn a_remote_database_without_required_tls_is_warned_of() {
        let risk = |url: &str| Database::new(url, None).unwrap().cleartext_risk();
        assert!(risk("postgres://t@db.internal/t").is_some_and(|w| w.contains("db.internal")));
        assert!(risk("postgres://t@10.0.0.5/t?sslmode=prefer").is_some());
        assert!(risk("postgres://t@db.internal/t?sslmode=require").is_none());
        for local in ["postgres://t@localhost/t", "postgres://t@127.0.0.1/t", "postgres://t@localhost/t?host=/run/postgresql"] {
            assert!(risk(local).is_none(), "{local}");
        }
        assert!(Database::new("postgres://t@db/t", Some(Path::new("/nonexistent/ca.pem"))).is_err(), "a CA file that is not there");
    }
}
