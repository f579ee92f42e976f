//! Tenants' secrets: encrypted at rest, held by the event loop, delivered to the tenant's own sandboxes only,
//! and masked in what tasks log.
//!
//! At rest each value is sealed with XChaCha20-Poly1305 (RustCrypto's `chacha20poly1305`, an audited AEAD)
//! under a 32-byte key kept outside the state directory (`--secrets-key`, made with mode 0600 at first start
//! if missing), with a random 24-byte nonce and the tenant and name as associated data, so that a sealed
//! value moved to another tenant or name does not open. One file a tenant, `STATE/secrets/<tenant>.json`,
//! written whole (temporary file, fsync, rename, fsync of the directory) by the store thread.
//!
//! The loop holds the opened values (the daemon is not dumpable, so they reach no core file) and a version a
//! tenant; a sandbox is sent a `Secrets` frame before its first invocation after a change. Values never
//! appear in a `Debug` output, an error message, the daemon's log, health or metrics.

use std::collections::{BTreeMap, HashMap};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};

use super::replace_file::{self, Durability};

/// At most this many secrets a tenant.
pub const MAX_SECRETS: usize = 100;
/// A value's largest size in bytes (UTF-8).
pub const MAX_VALUE: usize = 4096;
/// Occurrences of values at least this long are masked in tasks' logs (shorter ones would mask ordinary
/// words).
pub const MASK_MIN: usize = 6;

/// `^[A-Za-z_][A-Za-z0-9_]{0,63}$`.
pub fn valid_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 64
        && (b[0].is_ascii_alphabetic() || b[0] == b'_')
        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'_')
}

#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    #[error("{what} {path}")]
    Io { what: &'static str, path: PathBuf, source: io::Error },
    #[error("the secrets key {path} must be exactly 32 bytes (it is {len})")]
    KeyLength { path: PathBuf, len: usize },
    #[error("the secrets key {path} is readable by others (mode {mode:o}): it must be 0600 or 0400")]
    KeyMode { path: PathBuf, mode: u32 },
    #[error("{path}: not a secrets file of taskcell's")]
    Format { path: PathBuf },
}

/// The key, read (or made) once at start.
pub struct Key {
    cipher: XChaCha20Poly1305,
}

impl Key {
    /// Read the key at `path`, or make one there (32 random bytes, mode 0600, its directory 0700 if new).
    pub fn load_or_create(path: &Path) -> Result<Key, SecretsError> {
        let io = |what, source| SecretsError::Io { what, path: path.to_path_buf(), source };
        let mut file = match std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW).open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Key::create(path),
            Err(e) => return Err(io("opening", e)),
        };
        let mode = file.metadata().map_err(|e| io("reading", e))?.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(SecretsError::KeyMode { path: path.to_path_buf(), mode });
        }
        let mut bytes = Vec::with_capacity(32);
        Read::by_ref(&mut file).take(33).read_to_end(&mut bytes).map_err(|e| io("reading", e))?;
        if bytes.len() != 32 {
            return Err(SecretsError::KeyLength { path: path.to_path_buf(), len: bytes.len() });
        }
        Ok(Key::from_bytes(&bytes))
    }

    fn create(path: &Path) -> Result<Key, SecretsError> {
        let io = |what, source| SecretsError::Io { what, path: path.to_path_buf(), source };
        if let Some(dir) = path.parent() {
            std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(|e| io("creating the directory of", e))?;
        }
        let mut bytes = [0u8; 32];
        random(&mut bytes);
        // create_new: two daemons starting at once do not overwrite each other's key.
        let made = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path);
        match made {
            Ok(mut f) => {
                f.write_all(&bytes).and_then(|()| f.sync_all()).map_err(|e| io("writing", e))?;
                Ok(Key::from_bytes(&bytes))
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Key::load_or_create(path),
            Err(e) => Err(io("creating", e)),
        }
    }

    fn from_bytes(bytes: &[u8]) -> Key {
        Key { cipher: XChaCha20Poly1305::new_from_slice(bytes).expect("32 bytes") }
    }

    fn aad(tenant: &str, name: &str) -> Vec<u8> {
        format!("taskcell-secret\0{tenant}\0{name}").into_bytes()
    }

    fn seal(&self, tenant: &str, name: &str, value: &str) -> Sealed {
        let mut nonce = [0u8; 24];
        random(&mut nonce);
        let aad = Key::aad(tenant, name);
        let ciphertext = self
            .cipher
            .encrypt(XNonce::from_slice(&nonce), Payload { msg: value.as_bytes(), aad: &aad })
            .expect("XChaCha20-Poly1305 encryption does not fail");
        Sealed { nonce: hex(&nonce), ciphertext: hex(&ciphertext) }
    }

    fn open(&self, tenant: &str, name: &str, sealed: &Sealed) -> Option<String> {
        let nonce = unhex(&sealed.nonce).filter(|n| n.len() == 24)?;
        let ciphertext = unhex(&sealed.ciphertext)?;
        let aad = Key::aad(tenant, name);
        let plain = self.cipher.decrypt(XNonce::from_slice(&nonce), Payload { msg: &ciphertext, aad: &aad }).ok()?;
        String::from_utf8(plain).ok()
    }
}

fn random(out: &mut [u8]) {
    let mut filled = 0;
    while filled < out.len() {
        // SAFETY: getrandom writes at most `out.len() - filled` bytes into the unfilled tail of `out`.
        let n = unsafe { libc::getrandom(out[filled..].as_mut_ptr().cast(), out.len() - filled, 0) };
        if n > 0 {
            filled += n as usize;
        } else {
            assert_eq!(io::Error::last_os_error().raw_os_error(), Some(libc::EINTR), "getrandom failed");
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok()).collect()
}

/// One value as stored.
#[derive(Clone, serde::Serialize, serde::Deserialize)]
struct Sealed {
    nonce: String,
    ciphertext: String,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct StoredSecret {
    updated: String,
    #[serde(flatten)]
    sealed: Sealed,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct TenantFile {
    taskcell_secrets: u32,
    secrets: BTreeMap<String, StoredSecret>,
}

struct Entry {
    value: String,
    updated: String,
    sealed: Sealed,
}

#[derive(Default)]
struct TenantSecrets {
    /// Bumped on every change; 0 means "never had any" (a fresh sandbox has seen version 0).
    version: u64,
    entries: BTreeMap<String, Entry>,
}

/// A change to write: the tenant's whole file (or its removal when it has no secret left).
pub struct FileWrite {
    pub tenant: String,
    /// None: remove the file.
    pub contents: Option<Vec<u8>>,
}

/// `STATE/secrets`.
pub fn dir_in(state_dir: &Path) -> PathBuf {
    state_dir.join("secrets")
}

/// Every tenant's secrets, owned by the event loop.
pub struct Secrets {
    dir: PathBuf,
    key: Result<Key, String>,
    tenants: HashMap<String, TenantSecrets>,
    next_version: u64,
}

impl Secrets {
    /// Load every tenant's file from `STATE/secrets` (on the main thread, before serving). Without a key,
    /// secrets are unavailable and the API says why; the daemon serves everything else.
    pub fn open(state_dir: &Path, key: Result<Key, String>) -> Secrets {
        let dir = dir_in(state_dir);
        let mut me = Secrets { dir, key, tenants: HashMap::new(), next_version: 1 };
        if let Err(e) = me.load_all() {
            eprintln!("taskcell: secrets: {}", crate::error_chain(&e));
        }
        me
    }

    fn load_all(&mut self) -> Result<(), SecretsError> {
        let Ok(key) = &self.key else { return Ok(()) };
        for tenant in tenants_in(&self.dir)? {
            let tenant = tenant.as_str();
            let path = self.dir.join(format!("{tenant}.json"));
            let text = std::fs::read(&path).map_err(|source| SecretsError::Io { what: "reading", path: path.clone(), source })?;
            let file: TenantFile = serde_json::from_slice(&text).map_err(|_| SecretsError::Format { path: path.clone() })?;
            let mut t = TenantSecrets { version: self.next_version, entries: BTreeMap::new() };
            self.next_version += 1;
            for (name, stored) in file.secrets {
                match key.open(tenant, &name, &stored.sealed) {
                    Some(value) => {
                        t.entries.insert(name, Entry { value, updated: stored.updated, sealed: stored.sealed });
                    }
                    // A value sealed under another key, or tampered with: named, never shown.
                    None => eprintln!("taskcell: secrets: {tenant}/{name} does not open with this key; ignored"),
                }
            }
            self.tenants.insert(tenant.to_string(), t);
        }
        Ok(())
    }

    /// Take a tenant's file as it now is on disk (`--store`: another node's change, or this node's own one that
    /// the database refused, undone): its values replace those held, under a new version, so that its
    /// sandboxes are sent them before their next invocation.
    pub fn replace(&mut self, write: &FileWrite) {
        let Ok(key) = &self.key else { return };
        let mut t = TenantSecrets { version: self.next_version, entries: BTreeMap::new() };
        self.next_version += 1;
        if let Some(contents) = &write.contents {
            let Ok(file) = serde_json::from_slice::<TenantFile>(contents) else {
                eprintln!("taskcell: secrets: the shared file of {} is not a secrets file of taskcell's; ignored", write.tenant);
                return;
            };
            for (name, stored) in file.secrets {
                match key.open(&write.tenant, &name, &stored.sealed) {
                    Some(value) => {
                        t.entries.insert(name, Entry { value, updated: stored.updated, sealed: stored.sealed });
                    }
                    None => eprintln!("taskcell: secrets: {}/{name} does not open with this key; ignored", write.tenant),
                }
            }
        }
        self.tenants.insert(write.tenant.clone(), t);
    }

    /// Why secrets cannot be used, if they cannot.
    pub fn unavailable(&self) -> Option<&str> {
        self.key.as_ref().err().map(String::as_str)
    }

    /// Set a value; `Ok(created)` with the file to write. The caller has checked name and size.
    pub fn set(&mut self, tenant: &str, name: &str, value: String, updated: String) -> Result<(bool, String, FileWrite), String> {
        let key = self.key.as_ref().map_err(|e| e.clone())?;
        let t = self.tenants.entry(tenant.to_string()).or_default();
        let created = !t.entries.contains_key(name);
        if created && t.entries.len() >= MAX_SECRETS {
            return Err(format!("tenant {tenant} has {MAX_SECRETS} secrets, the most it may have"));
        }
        let sealed = key.seal(tenant, name, &value);
        t.entries.insert(name.to_string(), Entry { value, updated: updated.clone(), sealed });
        t.version = self.next_version;
        self.next_version += 1;
        Ok((created, updated, self.file_of(tenant)))
    }

    /// Remove a value; the file to write, or None if there was no such secret.
    pub fn remove(&mut self, tenant: &str, name: &str) -> Option<FileWrite> {
        let t = self.tenants.get_mut(tenant)?;
        t.entries.remove(name)?;
        t.version = self.next_version;
        self.next_version += 1;
        Some(self.file_of(tenant))
    }

    fn file_of(&self, tenant: &str) -> FileWrite {
        let t = &self.tenants[tenant];
        if t.entries.is_empty() {
            return FileWrite { tenant: tenant.to_string(), contents: None };
        }
        let file = TenantFile {
            taskcell_secrets: 1,
            secrets: t
                .entries
                .iter()
                .map(|(n, e)| (n.clone(), StoredSecret { updated: e.updated.clone(), sealed: e.sealed.clone() }))
                .collect(),
        };
        FileWrite { tenant: tenant.to_string(), contents: Some(serde_json::to_vec_pretty(&file).expect("serialisable")) }
    }

    /// Names and update times, sorted by name.
    pub fn list(&self, tenant: &str) -> Vec<(String, String)> {
        self.tenants.get(tenant).map(|t| t.entries.iter().map(|(n, e)| (n.clone(), e.updated.clone())).collect()).unwrap_or_default()
    }

    /// The tenant's current version (0: it never had a secret).
    pub fn version(&self, tenant: &str) -> u64 {
        self.tenants.get(tenant).map_or(0, |t| t.version)
    }

    /// The tenant's values, for a `Secrets` frame.
    pub fn values(&self, tenant: &str) -> crate::SecretValues {
        crate::SecretValues(
            self.tenants.get(tenant).map(|t| t.entries.iter().map(|(n, e)| (n.clone(), e.value.clone())).collect()).unwrap_or_default(),
        )
    }

    /// `text` with every occurrence of one of the tenant's values of `MASK_MIN` bytes or more replaced by
    /// `[secret:NAME]` (longest values first, so that a value containing another is masked whole). Taken by
    /// value: a tenant without secrets, the common case on the log path, costs no copy.
    pub fn mask(&self, tenant: &str, mut text: String) -> String {
        let Some(t) = self.tenants.get(tenant) else { return text };
        let mut values: Vec<(&String, &Entry)> = t.entries.iter().filter(|(_, e)| e.value.len() >= MASK_MIN).collect();
        values.sort_by_key(|(_, e)| std::cmp::Reverse(e.value.len()));
        for (name, e) in values {
            if text.contains(e.value.as_str()) {
                text = text.replace(e.value.as_str(), &format!("[secret:{name}]"));
            }
        }
        text
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// One tenant's file as it is on disk now (None: it has no secrets).
/// The tenants that have a secrets file in `dir` (`<tenant>.json`, a valid name), sorted; none if there is no
/// such directory.
pub fn tenants_in(dir: &Path) -> Result<Vec<String>, SecretsError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(SecretsError::Io { what: "reading", path: dir.to_path_buf(), source }),
    };
    let mut tenants: Vec<String> = entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.strip_suffix(".json").filter(|t| super::store::valid_name(t)).map(str::to_owned))
        .collect();
    tenants.sort();
    Ok(tenants)
}

pub fn read_file(dir: &Path, tenant: &str) -> Result<FileWrite, SecretsError> {
    let path = dir.join(format!("{tenant}.json"));
    match std::fs::read(&path) {
        Ok(contents) => Ok(FileWrite { tenant: tenant.to_string(), contents: Some(contents) }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(FileWrite { tenant: tenant.to_string(), contents: None }),
        Err(source) => Err(SecretsError::Io { what: "reading", path, source }),
    }
}

/// Write (or remove) one tenant's file durably: on the store thread, never on the loop.
pub fn write_file(dir: &Path, write: &FileWrite) -> Result<(), SecretsError> {
    let io = |what, path: &Path, source| SecretsError::Io { what, path: path.to_path_buf(), source };
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(|e| io("creating", dir, e))?;
    let target = dir.join(format!("{}.json", write.tenant));
    match &write.contents {
        None => match std::fs::remove_file(&target) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io("removing", &target, e)),
        },
        Some(contents) => {
            // Unique to the write: the store thread and `--store`'s follower may write one tenant's file at once.
            static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
            let n = WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let tmp = dir.join(format!(".tmp-{}-{}-{n}", write.tenant, std::process::id()));
            replace_file::replace(&target, &tmp, contents, Durability::Synced).map_err(|e| io(e.step, &e.path, e.source))?;
        }
    }
    std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(|e| io("syncing", dir, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("taskcell-secrets-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn names_follow_the_pattern() {
        for ok in ["A", "_", "API_KEY", "a1", &"x".repeat(64)] {
            assert!(valid_name(ok), "{ok}");
        }
        for bad in ["", "1A", "a-b", "a.b", "../x", "é", &"x".repeat(65)] {
            assert!(!valid_name(bad), "{bad}");
        }
    }

    #[test]
    fn values_survive_a_reload_sealed_and_bound_to_tenant_and_name() {
        let dir = scratch("reload");
        let key_path = dir.join("key");
        let key = Key::load_or_create(&key_path).unwrap();
        assert_eq!(std::fs::metadata(&key_path).unwrap().permissions().mode() & 0o777, 0o600);
        let mut s = Secrets::open(&dir, Ok(key));
        let (created, _, write) = s.set("acme", "API_KEY", "hunter2-very-secret".into(), "t0".into()).unwrap();
        assert!(created);
        write_file(s.dir(), &write).unwrap();
        let on_disk = std::fs::read(dir.join("secrets/acme.json")).unwrap();
        assert!(!String::from_utf8_lossy(&on_disk).contains("hunter2"), "the value is sealed at rest");
        // Reopened with the same key: the value is back. Moved to another tenant: it does not open.
        let again = Secrets::open(&dir, Ok(Key::load_or_create(&key_path).unwrap()));
        assert_eq!(again.values("acme").0["API_KEY"], "hunter2-very-secret");
        std::fs::copy(dir.join("secrets/acme.json"), dir.join("secrets/evil.json")).unwrap();
        let moved = Secrets::open(&dir, Ok(Key::load_or_create(&key_path).unwrap()));
        assert!(moved.values("evil").0.is_empty());
        // Another key opens nothing.
        let other = scratch("reload-other");
        std::fs::rename(dir.join("secrets"), other.join("secrets")).unwrap();
        let foreign = Secrets::open(&other, Ok(Key::load_or_create(&other.join("key")).unwrap()));
        assert!(foreign.values("acme").0.is_empty());
        let _ = std::fs::remove_dir_all(&dir);
        let _ = std::fs::remove_dir_all(&other);
    }

    #[test]
    fn a_key_readable_by_others_or_of_the_wrong_size_is_refused() {
        let dir = scratch("badkey");
        let p = dir.join("key");
        std::fs::write(&p, [7u8; 32]).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(Key::load_or_create(&p), Err(SecretsError::KeyMode { .. })));
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(&p, [7u8; 31]).unwrap();
        assert!(matches!(Key::load_or_create(&p), Err(SecretsError::KeyLength { len: 31, .. })));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn masking_replaces_long_values_longest_first_and_leaves_short_ones() {
        let dir = scratch("mask");
        let mut s = Secrets::open(&dir, Ok(Key::load_or_create(&dir.join("key")).unwrap()));
        s.set("t", "SHORT", "abc".into(), "0".into()).unwrap();
        s.set("t", "TOKEN", "tok-123456".into(), "0".into()).unwrap();
        s.set("t", "LONG", "prefix-tok-123456".into(), "0".into()).unwrap();
        assert_eq!(s.mask("t", "abc prefix-tok-123456 and tok-123456".into()), "abc [secret:LONG] and [secret:TOKEN]");
        assert_eq!(s.mask("other", "tok-123456".into()), "tok-123456", "another tenant's values are not its own");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn versions_move_on_every_change_and_the_cap_holds() {
        let dir = scratch("cap");
        let mut s = Secrets::open(&dir, Ok(Key::load_or_create(&dir.join("key")).unwrap()));
        assert_eq!(s.version("t"), 0);
        s.set("t", "A", "1".into(), "0".into()).unwrap();
        let v1 = s.version("t");
        s.set("t", "A", "2".into(), "0".into()).unwrap();
        assert!(s.version("t") > v1);
        for i in 1..MAX_SECRETS {
            s.set("t", &format!("S{i}"), "x".into(), "0".into()).unwrap();
        }
        assert!(s.set("t", "ONE_TOO_MANY", "x".into(), "0".into()).is_err());
        assert!(s.set("t", "A", "replacing is fine".into(), "0".into()).is_ok());
        assert!(s.remove("t", "A").is_some());
        assert!(s.remove("t", "A").is_none());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn debug_of_values_shows_names_only() {
        let v = crate::SecretValues([("K".to_string(), "v4lue-hidden".to_string())].into_iter().collect());
        assert!(!format!("{v:?}").contains("v4lue"));
    }
}
