//! Durable named tasks: the only module that reads or writes `<state-dir>/tasks/`.
//!
//! Layout: `<state-dir>/tasks/<tenant>/<task>.js`, directories 0700, files 0600. A task deployed with settings
//! (`model`, `timeout_ms`) has them in `<task>.settings.<sha256 of its source>` (JSON) beside it, written and
//! renamed into place before the source: the source's rename is the one step that switches a task to its new
//! version, and a version's settings are found by its source's hash, so a crash leaves the old source with the
//! old settings or the new with the new, never a mix. No settings file means the defaults. A `PUT` writes a temporary
//! file in the tenant's directory (`.tmp-*`, a name that can never be a valid task name), fsyncs it, renames it
//! over the target and fsyncs the directory, so once `put` returns the source survives a crash, and a reader
//! only ever sees a complete file, old or new. `open` removes temporaries left by a crash.
//!
//! Names are checked again here, whatever the caller did, so that no path trick can reach outside the tenant's
//! directory. A bounded in-memory cache serves hot tasks without touching the disk: `get` is called from the
//! event loop, `put` and `delete` from a worker thread (they block on fsync). This module knows nothing of
//! HTTP, sandboxes or compilation.

use std::collections::HashMap;
use std::fs::{self, DirBuilder, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use bytes::Bytes;
use sha2::{Digest, Sha256};

/// Prefix of temporary files; starts with a dot so that it never passes `valid_name`.
const TMP_PREFIX: &str = ".tmp-";
const EXTENSION: &str = ".js";
/// A task's V8 code cache sits beside it: the source's SHA-256 in hex, a newline, the cache's bytes.
const CODE_CACHE_EXTENSION: &str = ".js.v8cache";
/// `<task>.settings.<sha256>`: never ends in `.js`, so never listed as a task.
const SETTINGS_INFIX: &str = ".settings.";
/// A tenant's egress allow-list (`{"allow": [...]}`, as the API was given it) sits beside its tasks; the dot
/// keeps it from ever being a task's name.
const EGRESS_FILE: &str = ".egress.json";
/// Total source bytes the cache may hold; beyond it the least recently used tasks are dropped.
const CACHE_BYTES: usize = 32 << 20;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{op} {path}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("invalid {what} name {name:?}")]
    BadName { what: &'static str, name: String },
    #[error("the settings file {path} is not valid")]
    BadSettings {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

/// A task's settings as deployed; `None` is the default (the `taskcell` model, the daemon's `--timeout-ms`),
/// resolved where the defaults are known, so that a task deployed without them follows the operator's.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TaskSettings {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
}

impl TaskSettings {
    pub fn is_default(&self) -> bool {
        self.model.is_none() && self.timeout_ms.is_none()
    }
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> StoreError + 'a {
    move |source| StoreError::Io { op, path: path.to_path_buf(), source }
}

/// `^[a-z0-9][a-z0-9_-]{0,62}$`, byte for byte: no decoding of any kind happens here or later.
pub fn valid_name(name: &str) -> bool {
    let b = name.as_bytes();
    let alnum = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    !b.is_empty() && b.len() <= 63 && alnum(b[0]) && b[1..].iter().all(|&c| alnum(c) || c == b'_' || c == b'-')
}

fn check(what: &'static str, name: &str) -> Result<(), StoreError> {
    if valid_name(name) {
        Ok(())
    } else {
        Err(StoreError::BadName { what, name: name.to_owned() })
    }
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    let mut hex = String::with_capacity(64);
    for b in digest {
        hex.push(char::from(b"0123456789abcdef"[usize::from(b >> 4)]));
        hex.push(char::from(b"0123456789abcdef"[usize::from(b & 15)]));
    }
    hex
}

#[derive(Clone, Debug)]
pub struct TaskInfo {
    pub task: String,
    /// Lower-case hex SHA-256 of the source; also the `ETag`.
    pub sha256: String,
    pub size: u64,
    /// RFC 3339 UTC, whole seconds, from the file's mtime (so it survives a restart).
    pub updated: String,
    pub settings: TaskSettings,
}

struct Entry {
    info: TaskInfo,
    source: Bytes,
    last_used: u64,
}

/// tenant -> task -> entry; nested so that a lookup borrows `&str` keys instead of allocating.
struct Cache {
    tenants: HashMap<String, HashMap<String, Entry>>,
    bytes: usize,
    limit: usize,
    tick: u64,
    /// Bumped by every put and delete. A reader that missed the cache notes it before reading the disk and
    /// caches what it read only if it is unchanged, so that a slow read can never reinstate a stale source.
    generation: u64,
}

impl Cache {
    fn get(&mut self, tenant: &str, task: &str) -> Option<(TaskInfo, Bytes)> {
        self.tick += 1;
        let entry = self.tenants.get_mut(tenant)?.get_mut(task)?;
        entry.last_used = self.tick;
        Some((entry.info.clone(), entry.source.clone()))
    }

    fn remove(&mut self, tenant: &str, task: &str) {
        if let Some(tasks) = self.tenants.get_mut(tenant) {
            if let Some(old) = tasks.remove(task) {
                self.bytes -= old.source.len();
            }
            if tasks.is_empty() {
                self.tenants.remove(tenant);
            }
        }
    }

    fn insert(&mut self, tenant: &str, info: TaskInfo, source: Bytes) {
        self.remove(tenant, &info.task);
        if source.len() > self.limit {
            return;
        }
        while self.bytes + source.len() > self.limit {
            self.evict_one();
        }
        self.tick += 1;
        self.bytes += source.len();
        let task = info.task.clone();
        let entry = Entry { info, source, last_used: self.tick };
        self.tenants.entry(tenant.to_owned()).or_default().insert(task, entry);
    }

    fn evict_one(&mut self) {
        let oldest = self
            .tenants
            .iter()
            .flat_map(|(tenant, tasks)| tasks.iter().map(move |(task, e)| (e.last_used, tenant, task)))
            .min()
            .map(|(_, tenant, task)| (tenant.clone(), task.clone()));
        if let Some((tenant, task)) = oldest {
            self.remove(&tenant, &task);
        }
    }
}

pub struct Store {
    /// `<state-dir>/tasks`
    root: PathBuf,
    cache: Mutex<Cache>,
    /// Serialises put and delete: the created/replaced answer and the order of cache updates then match the
    /// order of renames on disk. Deployments are rare; readers never take this lock.
    writer: Mutex<()>,
    tmp_counter: AtomicU64,
}

impl Store {
    pub fn open(state_dir: &Path) -> Result<Store, StoreError> {
        Self::with_cache_limit(state_dir, CACHE_BYTES)
    }

    fn with_cache_limit(state_dir: &Path, limit: usize) -> Result<Store, StoreError> {
        let root = state_dir.join("tasks");
        DirBuilder::new().recursive(true).mode(0o700).create(&root).map_err(io_err("creating", &root))?;
        // An existing directory keeps its mode through `create`; tenants' sources are nobody else's business.
        fs::set_permissions(&root, fs::Permissions::from_mode(0o700)).map_err(io_err("chmod", &root))?;
        remove_leftovers(&root)?;
        let cache = Cache { tenants: HashMap::new(), bytes: 0, limit, tick: 0, generation: 0 };
        Ok(Store { root, cache: Mutex::new(cache), writer: Mutex::new(()), tmp_counter: AtomicU64::new(0) })
    }

    /// Store a task with the default settings.
    pub fn put(&self, tenant: &str, task: &str, source: &[u8]) -> Result<(TaskInfo, bool), StoreError> {
        self.put_with(tenant, task, source, &TaskSettings::default())
    }

    /// Store a task's source and settings; once this returns both survive a crash.
    pub fn put_with(&self, tenant: &str, task: &str, source: &[u8], settings: &TaskSettings) -> Result<(TaskInfo, bool), StoreError> {
        check("tenant", tenant)?;
        check("task", task)?;
        let _writer = lock(&self.writer);
        let dir = self.tenant_dir(tenant)?;
        let target = dir.join(format!("{task}{EXTENSION}"));
        let sha256 = sha256_hex(source);
        let settings_name = format!("{task}{SETTINGS_INFIX}{sha256}");
        if !settings.is_default() {
            // Before the source: the new version's settings are in place when its source appears.
            let text = serde_json::to_vec(settings).expect("settings serialise");
            let n = self.tmp_counter.fetch_add(1, Ordering::Relaxed);
            let tmp = dir.join(format!("{TMP_PREFIX}{}-{n}", std::process::id()));
            let path = dir.join(&settings_name);
            if let Err(e) = write_synced(&tmp, &text).and_then(|_| fs::rename(&tmp, &path).map_err(io_err("renaming into place", &path))) {
                let _ = fs::remove_file(&tmp);
                return Err(e);
            }
        }
        let n = self.tmp_counter.fetch_add(1, Ordering::Relaxed);
        let tmp = dir.join(format!("{TMP_PREFIX}{}-{n}", std::process::id()));

        let written = write_synced(&tmp, source);
        let mtime = match written {
            Ok(mtime) => mtime,
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                return Err(e);
            }
        };
        let created = match fs::symlink_metadata(&target) {
            Ok(_) => false,
            Err(e) if e.kind() == io::ErrorKind::NotFound => true,
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                return Err(io_err("stat", &target)(e));
            }
        };
        if let Err(e) = fs::rename(&tmp, &target) {
            let _ = fs::remove_file(&tmp);
            return Err(io_err("renaming into place", &target)(e));
        }
        let info =
            TaskInfo { task: task.to_owned(), sha256, size: source.len() as u64, updated: rfc3339(mtime), settings: settings.clone() };
        // Other versions' settings (and this version's, when it is now deployed with the defaults) go.
        let keep = if settings.is_default() { None } else { Some(settings_name.as_str()) };
        remove_settings(&dir, task, keep);
        let synced = sync_dir(&dir);
        // Whatever happened, the disk now holds the new source: the cache must not keep the old one.
        let mut cache = lock(&self.cache);
        cache.generation += 1;
        match synced {
            Ok(()) => cache.insert(tenant, info.clone(), Bytes::copy_from_slice(source)),
            Err(_) => cache.remove(tenant, task),
        }
        drop(cache);
        synced.map(|()| (info, created))
    }

    pub fn get(&self, tenant: &str, task: &str) -> Result<Option<(TaskInfo, Bytes)>, StoreError> {
        check("tenant", tenant)?;
        check("task", task)?;
        let generation = {
            let mut cache = lock(&self.cache);
            if let Some(hit) = cache.get(tenant, task) {
                return Ok(Some(hit));
            }
            cache.generation
        };
        let path = self.root.join(tenant).join(format!("{task}{EXTENSION}"));
        let Some((info, source)) = read_task(&path, task)? else {
            return Ok(None);
        };
        let mut cache = lock(&self.cache);
        if cache.generation == generation {
            cache.insert(tenant, info.clone(), source.clone());
        }
        Ok(Some((info, source)))
    }

    /// The tenant's tasks sorted by name; a tenant that never stored one has none.
    pub fn list(&self, tenant: &str) -> Result<Vec<TaskInfo>, StoreError> {
        check("tenant", tenant)?;
        let dir = self.root.join(tenant);
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err("listing", &dir)(e)),
        };
        let mut names = Vec::new();
        for entry in entries {
            let entry = entry.map_err(io_err("listing", &dir))?;
            let file_type = entry.file_type().map_err(io_err("stat", &entry.path()))?;
            let name = entry.file_name();
            let task = name.to_str().and_then(|n| n.strip_suffix(EXTENSION));
            if let Some(task) = task.filter(|t| file_type.is_file() && valid_name(t)) {
                names.push(task.to_owned());
            }
        }
        names.sort_unstable();
        let mut tasks = Vec::with_capacity(names.len());
        for task in names {
            // Through `get` for the cache; a task deleted since the directory was read is simply left out.
            if let Some((info, _)) = self.get(tenant, &task)? {
                tasks.push(info);
            }
        }
        Ok(tasks)
    }

    pub fn delete(&self, tenant: &str, task: &str) -> Result<bool, StoreError> {
        check("tenant", tenant)?;
        check("task", task)?;
        let _writer = lock(&self.writer);
        let dir = self.root.join(tenant);
        let path = dir.join(format!("{task}{EXTENSION}"));
        let removed = fs::remove_file(&path);
        self.forget_code_cache(tenant, task);
        remove_settings(&dir, task, None);
        {
            let mut cache = lock(&self.cache);
            cache.generation += 1;
            cache.remove(tenant, task);
        }
        match removed {
            Ok(()) => sync_dir(&dir).map(|()| true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(io_err("removing", &path)(e)),
        }
    }

    /// Keep the V8 code cache of a task's current source (`sha256`), replacing any other. Not made durable: a
    /// cache lost in a crash is only made again by the next deploy, and a torn one is refused by V8.
    pub fn put_code_cache(&self, tenant: &str, task: &str, sha256: &str, cache: &[u8]) -> Result<(), StoreError> {
        check("tenant", tenant)?;
        check("task", task)?;
        let dir = self.root.join(tenant);
        let target = dir.join(format!("{task}{CODE_CACHE_EXTENSION}"));
        let n = self.tmp_counter.fetch_add(1, Ordering::Relaxed);
        let tmp = dir.join(format!("{TMP_PREFIX}{}-{n}", std::process::id()));
        let written = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .and_then(|mut f| f.write_all(format!("{sha256}\n").as_bytes()).and_then(|()| f.write_all(cache)))
            .and_then(|()| fs::rename(&tmp, &target));
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            return Err(io_err("writing the code cache", &target)(e));
        }
        Ok(())
    }

    /// The code cache kept for this task's source `sha256`, if there is one for that very source.
    pub fn code_cache(&self, tenant: &str, task: &str, sha256: &str) -> Option<Bytes> {
        if !valid_name(tenant) || !valid_name(task) {
            return None;
        }
        let path = self.root.join(tenant).join(format!("{task}{CODE_CACHE_EXTENSION}"));
        let mut file = OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW).open(path).ok()?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).ok()?;
        let rest = bytes.strip_prefix(sha256.as_bytes())?.strip_prefix(b"\n")?;
        Some(Bytes::copy_from_slice(rest))
    }

    /// Drop a task's code cache, if it has one.
    pub fn forget_code_cache(&self, tenant: &str, task: &str) {
        if valid_name(tenant) && valid_name(task) {
            let _ = fs::remove_file(self.root.join(tenant).join(format!("{task}{CODE_CACHE_EXTENSION}")));
        }
    }

    /// Replace the tenant's egress allow-list, durably (the same write, fsync and rename as a task's source).
    pub fn put_egress(&self, tenant: &str, allow: &[String]) -> Result<(), StoreError> {
        check("tenant", tenant)?;
        let _writer = lock(&self.writer);
        let dir = self.tenant_dir(tenant)?;
        let target = dir.join(EGRESS_FILE);
        let n = self.tmp_counter.fetch_add(1, Ordering::Relaxed);
        let tmp = dir.join(format!("{TMP_PREFIX}{}-{n}", std::process::id()));
        let body = serde_json::json!({ "allow": allow }).to_string();
        if let Err(e) = write_synced(&tmp, body.as_bytes()) {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        if let Err(e) = fs::rename(&tmp, &target) {
            let _ = fs::remove_file(&tmp);
            return Err(io_err("renaming into place", &target)(e));
        }
        sync_dir(&dir)
    }

    /// Every tenant that has a directory here (tasks or an allow-list), sorted.
    pub fn tenants(&self) -> Result<Vec<String>, StoreError> {
        let mut out = Vec::new();
        for entry in fs::read_dir(&self.root).map_err(io_err("listing", &self.root))? {
            let entry = entry.map_err(io_err("listing", &self.root))?;
            let is_dir = entry.file_type().map_err(io_err("stat", &entry.path()))?.is_dir();
            if let Some(name) = entry.file_name().to_str().filter(|n| is_dir && valid_name(n)) {
                out.push(name.to_owned());
            }
        }
        out.sort();
        Ok(out)
    }

    /// Every tenant's stored egress allow-list, as stored (read once, at start-up). A file that is not a list
    /// of strings is reported, not served.
    pub fn egress_lists(&self) -> Result<Vec<(String, Vec<String>)>, StoreError> {
        let mut out = Vec::new();
        for name in self.tenants()? {
            let path = self.root.join(&name).join(EGRESS_FILE);
            let mut text = String::new();
            match OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW).open(&path) {
                Ok(mut f) => f.read_to_string(&mut text).map_err(io_err("reading", &path))?,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_err("opening", &path)(e)),
            };
            #[derive(serde::Deserialize)]
            struct List {
                allow: Vec<String>,
            }
            let list: List =
                serde_json::from_str(&text).map_err(|e| io_err("parsing", &path)(io::Error::new(io::ErrorKind::InvalidData, e)))?;
            out.push((name, list.allow));
        }
        out.sort();
        Ok(out)
    }

    /// The tenant's directory, created (and made durable in `tasks/`) on its first task.
    fn tenant_dir(&self, tenant: &str) -> Result<PathBuf, StoreError> {
        let dir = self.root.join(tenant);
        match DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => sync_dir(&self.root)?,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io_err("creating", &dir)(e)),
        }
        Ok(dir)
    }
}

/// A poisoned lock only means another thread panicked mid-update; the cache is still a valid map (at worst it
/// misses an entry) and the writer lock guards no data, so carry on rather than take the daemon down.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Creates `tmp` exclusively, writes `source` and fsyncs it; returns its mtime in seconds since the epoch.
fn write_synced(tmp: &Path, source: &[u8]) -> Result<i64, StoreError> {
    let mut file = OpenOptions::new().write(true).create_new(true).mode(0o600).open(tmp).map_err(io_err("creating", tmp))?;
    file.write_all(source).map_err(io_err("writing", tmp))?;
    file.sync_all().map_err(io_err("fsync", tmp))?;
    let meta = file.metadata().map_err(io_err("stat", tmp))?;
    Ok(meta.mtime())
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    let d = OpenOptions::new().read(true).custom_flags(libc::O_DIRECTORY).open(dir).map_err(io_err("opening", dir))?;
    d.sync_all().map_err(io_err("fsync", dir))
}

/// Removes the task's settings files but `keep` (best effort: a file left is never read for another version).
fn remove_settings(dir: &Path, task: &str, keep: Option<&str>) {
    let prefix = format!("{task}{SETTINGS_INFIX}");
    let Ok(entries) = fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.starts_with(&prefix) && Some(name) != keep {
            let _ = fs::remove_file(entry.path());
        }
    }
}

/// The settings of the task version whose source hashes to `sha256`: the defaults if it has no file.
fn read_settings(dir: &Path, task: &str, sha256: &str) -> Result<TaskSettings, StoreError> {
    let path = dir.join(format!("{task}{SETTINGS_INFIX}{sha256}"));
    let mut file = match OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW).open(&path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(TaskSettings::default()),
        Err(e) => return Err(io_err("opening", &path)(e)),
    };
    let mut text = Vec::new();
    file.read_to_end(&mut text).map_err(io_err("reading", &path))?;
    serde_json::from_slice(&text).map_err(|source| StoreError::BadSettings { path, source })
}

fn read_task(path: &Path, task: &str) -> Result<Option<(TaskInfo, Bytes)>, StoreError> {
    // O_NOFOLLOW: only files this module wrote are served, never whatever a symlink points at.
    let mut file = match OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW).open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err("opening", path)(e)),
    };
    let meta = file.metadata().map_err(io_err("stat", path))?;
    let mut source = Vec::with_capacity(meta.len() as usize);
    file.read_to_end(&mut source).map_err(io_err("reading", path))?;
    let sha256 = sha256_hex(&source);
    let settings = read_settings(path.parent().unwrap_or(Path::new(".")), task, &sha256)?;
    let info = TaskInfo { task: task.to_owned(), sha256, size: source.len() as u64, updated: rfc3339(meta.mtime()), settings };
    Ok(Some((info, Bytes::from(source))))
}

/// Removes the `.tmp-*` files a crash left in tenant directories; they were never renamed, so never served.
fn remove_leftovers(root: &Path) -> Result<(), StoreError> {
    for tenant in fs::read_dir(root).map_err(io_err("listing", root))? {
        let tenant = tenant.map_err(io_err("listing", root))?;
        if !tenant.file_type().map_err(io_err("stat", &tenant.path()))?.is_dir() {
            continue;
        }
        let dir = tenant.path();
        let mut removed = false;
        for entry in fs::read_dir(&dir).map_err(io_err("listing", &dir))? {
            let entry = entry.map_err(io_err("listing", &dir))?;
            if entry.file_name().as_encoded_bytes().starts_with(TMP_PREFIX.as_bytes()) {
                let path = entry.path();
                fs::remove_file(&path).map_err(io_err("removing", &path))?;
                removed = true;
            }
        }
        if removed {
            sync_dir(&dir)?;
        }
    }
    Ok(())
}

/// Seconds since the Unix epoch as `YYYY-MM-DDTHH:MM:SSZ`.
fn rfc3339(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem / 60 % 60, rem % 60)
}

/// Proleptic Gregorian date of a day count since 1970-01-01 (Howard Hinnant's `civil_from_days`).
pub(super) fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365]
    let mp = (5 * doy + 2) / 153; // [0, 11], March-based
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh state directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> TempDir {
            static N: AtomicU64 = AtomicU64::new(0);
            let n = N.fetch_add(1, Ordering::Relaxed);
            let p = std::env::temp_dir().join(format!("taskcell-store-{tag}-{}-{n}", std::process::id()));
            let _ = fs::remove_dir_all(&p);
            fs::create_dir_all(&p).unwrap();
            TempDir(p)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn files_in(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        v.sort();
        v
    }

    #[test]
    fn store_is_shareable_between_threads() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<Store>();
    }

    #[test]
    fn valid_names() {
        for good in ["a", "0", "a-b_c", "tenant1", &"a".repeat(63), "9-", "a_"] {
            assert!(valid_name(good), "{good:?}");
        }
        let long = "a".repeat(64);
        for bad in ["", "..", ".", "a/b", "A", "aB", "-a", "_a", "%2e%2e", "a%2f", "a.b", "a b", "é", "a\0", &long] {
            assert!(!valid_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn round_trip() {
        let tmp = TempDir::new("rt");
        let store = Store::open(&tmp.0).unwrap();
        let (info, created) = store.put("acme", "hello", b"module.exports = () => 1;").unwrap();
        assert!(created);
        assert_eq!(info.task, "hello");
        assert_eq!(info.size, 25);
        assert_eq!(info.sha256, sha256_hex(b"module.exports = () => 1;"));

        let (got, source) = store.get("acme", "hello").unwrap().unwrap();
        assert_eq!(&source[..], b"module.exports = () => 1;");
        assert_eq!(got.sha256, info.sha256);

        let (info2, created) = store.put("acme", "hello", b"module.exports = () => 2;").unwrap();
        assert!(!created, "second put replaces");
        assert_ne!(info2.sha256, info.sha256);
        assert_eq!(&store.get("acme", "hello").unwrap().unwrap().1[..], b"module.exports = () => 2;");

        store.put("acme", "a-first", b"x").unwrap();
        store.put("other", "hello", b"y").unwrap();
        let names: Vec<String> = store.list("acme").unwrap().into_iter().map(|t| t.task).collect();
        assert_eq!(names, ["a-first", "hello"]);

        assert!(store.delete("acme", "hello").unwrap());
        assert!(!store.delete("acme", "hello").unwrap(), "second delete finds nothing");
        assert!(store.get("acme", "hello").unwrap().is_none());
        assert_eq!(store.list("acme").unwrap().len(), 1);
        assert_eq!(&store.get("other", "hello").unwrap().unwrap().1[..], b"y", "tenants are separate");
    }

    #[test]
    fn egress_lists_survive_reopen_and_are_not_tasks() {
        let dir = TempDir::new("egress");
        let store = Store::open(&dir.0).unwrap();
        store.put_egress("acme", &["a.test:443".to_string()]).unwrap();
        store.put_egress("acme", &["b.test:443".to_string(), "*.c.test:80".to_string()]).unwrap();
        store.put("acme", "t", b"x").unwrap();
        drop(store);
        let store = Store::open(&dir.0).unwrap();
        assert_eq!(store.egress_lists().unwrap(), vec![("acme".to_string(), vec!["b.test:443".to_string(), "*.c.test:80".to_string()])]);
        assert_eq!(store.list("acme").unwrap().len(), 1);
        assert!(store.put_egress("../x", &[]).is_err());
    }

    #[test]
    fn survives_reopen() {
        let tmp = TempDir::new("reopen");
        let info = Store::open(&tmp.0).unwrap().put("acme", "t", b"source").unwrap().0;
        let store = Store::open(&tmp.0).unwrap();
        let (again, source) = store.get("acme", "t").unwrap().unwrap();
        assert_eq!(&source[..], b"source");
        assert_eq!((again.sha256, again.size, again.updated), (info.sha256, info.size, info.updated));
    }

    #[test]
    fn bad_names_refused_and_nothing_created() {
        let tmp = TempDir::new("bad");
        let store = Store::open(&tmp.0).unwrap();
        let long = "a".repeat(64);
        for bad in ["..", "a/b", "A", "", long.as_str(), "%2e%2e", "-a", "../x"] {
            assert!(matches!(store.put(bad, "t", b"x"), Err(StoreError::BadName { what: "tenant", .. })));
            assert!(matches!(store.put("ok", bad, b"x"), Err(StoreError::BadName { what: "task", .. })));
            assert!(matches!(store.get(bad, "t"), Err(StoreError::BadName { .. })));
            assert!(matches!(store.get("ok", bad), Err(StoreError::BadName { .. })));
            assert!(matches!(store.delete(bad, "t"), Err(StoreError::BadName { .. })));
            assert!(matches!(store.delete("ok", bad), Err(StoreError::BadName { .. })));
            assert!(matches!(store.list(bad), Err(StoreError::BadName { .. })));
        }
        assert!(files_in(&tmp.0.join("tasks")).is_empty());
        assert_eq!(files_in(&tmp.0), ["tasks"]);
    }

    #[test]
    fn open_removes_leftover_temporaries() {
        let tmp = TempDir::new("leftover");
        let store = Store::open(&tmp.0).unwrap();
        store.put("acme", "keep", b"k").unwrap();
        drop(store);
        let dir = tmp.0.join("tasks/acme");
        fs::write(dir.join(".tmp-123-0"), b"half a sour").unwrap();
        fs::write(dir.join(".tmp-999-7"), b"").unwrap();
        let store = Store::open(&tmp.0).unwrap();
        assert_eq!(files_in(&dir), ["keep.js"]);
        assert_eq!(store.list("acme").unwrap().len(), 1);
    }

    #[test]
    fn put_leaves_exactly_the_file() {
        let tmp = TempDir::new("durable");
        let store = Store::open(&tmp.0).unwrap();
        store.put("acme", "job", b"module.exports = d => d;").unwrap();
        let tasks = tmp.0.join("tasks");
        let dir = tasks.join("acme");
        assert_eq!(files_in(&dir), ["job.js"], "no temporary file remains");
        assert_eq!(fs::read(dir.join("job.js")).unwrap(), b"module.exports = d => d;");
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&tasks), 0o700);
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join("job.js")), 0o600);
    }

    #[test]
    fn list_ignores_strays_and_unknown_tenants() {
        let tmp = TempDir::new("list");
        let store = Store::open(&tmp.0).unwrap();
        assert!(store.list("nobody").unwrap().is_empty());
        store.put("acme", "b", b"b").unwrap();
        store.put("acme", "a", b"a").unwrap();
        let dir = tmp.0.join("tasks/acme");
        fs::write(dir.join(".tmp-1-1"), b"x").unwrap(); // as if a put were in flight
        fs::write(dir.join("notes.txt"), b"x").unwrap();
        fs::write(dir.join("UPPER.js"), b"x").unwrap();
        fs::create_dir(dir.join("sub.js")).unwrap();
        let names: Vec<String> = store.list("acme").unwrap().into_iter().map(|t| t.task).collect();
        assert_eq!(names, ["a", "b"]);
    }

    #[test]
    fn get_reads_disk_on_cache_miss() {
        let tmp = TempDir::new("miss");
        let store = Store::with_cache_limit(&tmp.0, 4).unwrap();
        store.put("acme", "big", b"too big to cache").unwrap();
        store.put("acme", "s1", b"abc").unwrap();
        store.put("acme", "s2", b"de").unwrap(); // evicts s1
        assert_eq!(lock(&store.cache).bytes, 2);
        assert_eq!(&store.get("acme", "big").unwrap().unwrap().1[..], b"too big to cache");
        assert_eq!(&store.get("acme", "s1").unwrap().unwrap().1[..], b"abc");
        assert_eq!(&store.get("acme", "s2").unwrap().unwrap().1[..], b"de");
        assert!(lock(&store.cache).bytes <= 4);
    }

    #[test]
    fn updated_is_rfc3339() {
        let tmp = TempDir::new("time");
        let store = Store::open(&tmp.0).unwrap();
        let (info, _) = store.put("acme", "t", b"x").unwrap();
        let u = info.updated.as_bytes();
        assert_eq!(u.len(), 20, "{}", info.updated);
        for (i, &c) in u.iter().enumerate() {
            match i {
                4 | 7 => assert_eq!(c, b'-'),
                10 => assert_eq!(c, b'T'),
                13 | 16 => assert_eq!(c, b':'),
                19 => assert_eq!(c, b'Z'),
                _ => assert!(c.is_ascii_digit(), "{}", info.updated),
            }
        }
        assert!(info.updated.as_str() >= "2024-01-01T00:00:00Z");
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_795_966_200), "2026-11-29T15:30:00Z");
        assert_eq!(rfc3339(4_107_542_399), "2100-02-28T23:59:59Z");
        assert_eq!(rfc3339(-1), "1969-12-31T23:59:59Z");
    }

    #[test]
    fn settings_are_stored_with_their_version_and_reset_by_a_put_without_them() {
        let dir = TempDir::new("settings");
        let store = Store::open(&dir.0).unwrap();
        let webtask = TaskSettings { model: Some("webtask".into()), timeout_ms: Some(20_000) };
        store.put_with("acme", "hook", b"module.exports = (cb) => cb()", &webtask).unwrap();
        assert_eq!(store.get("acme", "hook").unwrap().unwrap().0.settings, webtask);
        // From disk too, after a restart, and in the listing.
        let store = Store::open(&dir.0).unwrap();
        assert_eq!(store.get("acme", "hook").unwrap().unwrap().0.settings, webtask);
        assert_eq!(store.list("acme").unwrap()[0].settings, webtask);
        // A new source with other settings replaces both; the old version's file goes.
        let short = TaskSettings { model: None, timeout_ms: Some(5) };
        store.put_with("acme", "hook", b"module.exports = () => 2", &short).unwrap();
        assert_eq!(Store::open(&dir.0).unwrap().get("acme", "hook").unwrap().unwrap().0.settings, short);
        // The same source without settings: the defaults, and no settings file left.
        store.put("acme", "hook", b"module.exports = () => 2").unwrap();
        assert!(Store::open(&dir.0).unwrap().get("acme", "hook").unwrap().unwrap().0.settings.is_default());
        assert_eq!(files_in(&dir.0.join("tasks/acme")), ["hook.js"]);
        // A settings file left by a crash before the source's rename belongs to a version never deployed.
        fs::write(dir.0.join("tasks/acme").join(format!("hook.settings.{}", sha256_hex(b"other"))), br#"{"model":"openwhisk"}"#).unwrap();
        assert!(Store::open(&dir.0).unwrap().get("acme", "hook").unwrap().unwrap().0.settings.is_default());
        store.put_with("acme", "hook", b"x", &webtask).unwrap();
        assert!(store.delete("acme", "hook").unwrap());
        assert!(files_in(&dir.0.join("tasks/acme")).is_empty(), "delete takes the settings with the task");
    }

    #[test]
    fn a_code_cache_is_served_for_its_own_source_only() {
        let dir = TempDir::new("codecache");
        let store = Store::open(&dir.0).unwrap();
        let (info, _) = store.put("acme", "big", b"module.exports = () => 1").unwrap();
        assert!(store.code_cache("acme", "big", &info.sha256).is_none());
        store.put_code_cache("acme", "big", &info.sha256, b"\x00cache\xff").unwrap();
        assert_eq!(store.code_cache("acme", "big", &info.sha256).as_deref(), Some(&b"\x00cache\xff"[..]));
        // Another version's, another task's or another tenant's: none.
        assert!(store.code_cache("acme", "big", &sha256_hex(b"other source")).is_none());
        assert!(store.code_cache("acme", "small", &info.sha256).is_none());
        assert!(store.code_cache("other", "big", &info.sha256).is_none());
        // The cache file is not a task, and goes with the task.
        assert_eq!(store.list("acme").unwrap().len(), 1);
        assert!(store.delete("acme", "big").unwrap());
        assert!(store.code_cache("acme", "big", &info.sha256).is_none());
        assert_eq!(fs::read_dir(dir.0.join("tasks/acme")).unwrap().count(), 0);
    }
}
