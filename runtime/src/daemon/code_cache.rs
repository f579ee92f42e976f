//! The V8 code caches of deployed tasks, bounded by the daemon.
//!
//! Each deploy's syntax check, in the tenant's own sandbox, makes V8's code cache of the source and hands it
//! back; every later sandbox of that tenant that compiles the task gets it with the source (a 600 KB bundle
//! then compiles in ~1 ms instead of ~10). Never shared between tenants: a cache is code for V8 to trust, and
//! one tenant's sandbox made it. The store keeps each beside its task, so that a restart finds them.
//!
//! Everything in a cache came from a sandbox, so the daemon bounds it rather than trusting the bootstrap:
//! - a cache is at most [`max_cache_len`] of its source (a 10-byte task cannot leave an 8 MiB cache);
//! - all caches together hold at most `--code-cache-bytes`, one tenant at most a quarter of that, and past
//!   either bound the least recently used go first;
//! - nothing here reads the disk: a cache not in memory is a [`Lookup::Miss`], which the event loop answers by
//!   asking the store thread to load it (the run goes without it meanwhile).
//!
//! Owns no I/O and knows nothing of sandboxes or HTTP.

use std::collections::HashMap;

use bytes::Bytes;

/// The largest code cache kept for a source of `source_len` bytes. V8's cache of a module compiled without
/// running it holds the bytecode of what it compiled eagerly: a little for ordinary code (8 tasks of 200 KB
/// made 6 KB in all here), but close to 4x the source for code made of parenthesised functions, which V8
/// compiles at once (218 KB gave 840 KB). Eight times the source plus 64 KiB keeps every real cache and
/// still stops a 10-byte task from parking megabytes.
pub fn max_cache_len(source_len: usize) -> usize {
    source_len.saturating_mul(8).saturating_add(64 << 10)
}

/// What the loop knows of one task's cache.
#[derive(Debug, PartialEq, Eq)]
pub enum Lookup {
    /// This version's cache (empty: it has none, or it was too large to keep).
    Hit(Bytes),
    /// The store thread is loading it.
    Loading,
    /// Not known: ask the store thread (then [`CodeCaches::loading`]).
    Miss,
}

struct Entry {
    /// The compiled-code key of the version it is for (`task:<name>:<sha256>`).
    key: String,
    /// None while loading.
    cache: Option<Bytes>,
    last_used: u64,
}

#[derive(Default)]
pub struct CodeCaches {
    entries: HashMap<(String, String), Entry>,
    per_tenant: HashMap<String, usize>,
    bytes: usize,
    /// 0: code caches are off.
    limit: usize,
    tick: u64,
}

impl CodeCaches {
    pub fn new(limit: usize) -> CodeCaches {
        CodeCaches { limit, ..CodeCaches::default() }
    }

    pub fn enabled(&self) -> bool {
        self.limit > 0
    }

    /// One tenant's share of the budget.
    pub fn tenant_limit(&self) -> usize {
        self.limit / 4
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The most any one tenant holds (health shows it against `tenant_limit`).
    pub fn largest_tenant_bytes(&self) -> usize {
        self.per_tenant.values().copied().max().unwrap_or(0)
    }

    pub fn tenant_bytes(&self, tenant: &str) -> usize {
        self.per_tenant.get(tenant).copied().unwrap_or(0)
    }

    /// The cache of this tenant's task for the version `key` names.
    pub fn get(&mut self, tenant: &str, task: &str, key: &str) -> Lookup {
        if !self.enabled() {
            return Lookup::Hit(Bytes::new());
        }
        self.tick += 1;
        let tick = self.tick;
        match self.entries.get_mut(&(tenant.to_string(), task.to_string())) {
            Some(e) if e.key == key => {
                e.last_used = tick;
                match &e.cache {
                    Some(c) => Lookup::Hit(c.clone()),
                    None => Lookup::Loading,
                }
            }
            _ => Lookup::Miss,
        }
    }

    /// The store thread was asked to load this version: do not ask again until it answers.
    pub fn loading(&mut self, tenant: &str, task: &str, key: &str) {
        self.forget(tenant, task);
        self.tick += 1;
        let entry = Entry { key: key.to_string(), cache: None, last_used: self.tick };
        self.entries.insert((tenant.to_string(), task.to_string()), entry);
    }

    /// This version's cache (a deploy made it, or the store loaded it). One larger than the tenant's share
    /// is remembered as none; room is made by evicting the least recently used, the tenant's own first.
    pub fn set(&mut self, tenant: String, task: String, key: String, cache: Bytes) {
        self.forget(&tenant, &task);
        let cache = if cache.len() > self.tenant_limit() { Bytes::new() } else { cache };
        while self.tenant_bytes(&tenant) + cache.len() > self.tenant_limit() {
            if !self.evict_lru(Some(&tenant)) {
                break;
            }
        }
        while self.bytes + cache.len() > self.limit {
            if !self.evict_lru(None) {
                break;
            }
        }
        self.tick += 1;
        self.bytes += cache.len();
        *self.per_tenant.entry(tenant.clone()).or_default() += cache.len();
        self.entries.insert((tenant, task), Entry { key, cache: Some(cache), last_used: self.tick });
    }

    pub fn forget(&mut self, tenant: &str, task: &str) {
        if let Some(old) = self.entries.remove(&(tenant.to_string(), task.to_string())) {
            self.uncount(tenant, old.cache.map_or(0, |c| c.len()));
        }
    }

    fn uncount(&mut self, tenant: &str, len: usize) {
        self.bytes -= len;
        if let Some(n) = self.per_tenant.get_mut(tenant) {
            *n -= len;
            if *n == 0 {
                self.per_tenant.remove(tenant);
            }
        }
    }

    /// Drop the least recently used cache holding bytes (of `tenant` only, if given); false if none.
    /// Its entry goes too, so that a later run asks the store for it again.
    fn evict_lru(&mut self, tenant: Option<&str>) -> bool {
        let victim = self
            .entries
            .iter()
            .filter(|((t, _), e)| tenant.is_none_or(|want| t == want) && e.cache.as_ref().is_some_and(|c| !c.is_empty()))
            .min_by_key(|(_, e)| e.last_used)
            .map(|(k, _)| k.clone());
        let Some(k) = victim else { return false };
        self.forget(&k.0, &k.1);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(n: usize) -> Bytes {
        Bytes::from(vec![7u8; n])
    }

    #[test]
    fn a_version_is_a_miss_until_set_and_loading_in_between() {
        let mut c = CodeCaches::new(1 << 20);
        assert_eq!(c.get("a", "t", "task:t:1"), Lookup::Miss);
        c.loading("a", "t", "task:t:1");
        assert_eq!(c.get("a", "t", "task:t:1"), Lookup::Loading);
        c.set("a".into(), "t".into(), "task:t:1".into(), bytes(10));
        assert_eq!(c.get("a", "t", "task:t:1"), Lookup::Hit(bytes(10)));
        // Another version of the task, or another tenant's task of that name, is not this one.
        assert_eq!(c.get("a", "t", "task:t:2"), Lookup::Miss);
        assert_eq!(c.get("b", "t", "task:t:1"), Lookup::Miss);
    }

    #[test]
    fn one_tenant_gets_at_most_a_quarter_and_its_own_oldest_go_first() {
        let mut c = CodeCaches::new(400);
        c.set("other".into(), "x".into(), "k".into(), bytes(90));
        for i in 0..5 {
            c.set("greedy".into(), format!("t{i}"), "k".into(), bytes(40));
        }
        assert!(c.tenant_bytes("greedy") <= 100, "{}", c.tenant_bytes("greedy"));
        // The two least recently used of the greedy tenant's went; the other tenant's stayed.
        assert_eq!(c.get("greedy", "t0", "k"), Lookup::Miss);
        assert_eq!(c.get("greedy", "t4", "k"), Lookup::Hit(bytes(40)));
        assert_eq!(c.get("other", "x", "k"), Lookup::Hit(bytes(90)));
        // Larger than a share: remembered as none, nothing evicted for it.
        c.set("other".into(), "huge".into(), "k".into(), bytes(101));
        assert_eq!(c.get("other", "huge", "k"), Lookup::Hit(Bytes::new()));
        assert_eq!(c.get("other", "x", "k"), Lookup::Hit(bytes(90)));
    }

    #[test]
    fn the_total_stays_within_the_budget_evicting_the_least_recently_used() {
        let mut c = CodeCaches::new(400);
        for t in 0..8 {
            c.set(format!("t{t}"), "x".into(), "k".into(), bytes(90));
            // t0 is used all along: it stays.
            assert!(matches!(c.get("t0", "x", "k"), Lookup::Hit(_)));
            assert!(c.bytes() <= 400);
        }
        assert_eq!(c.get("t0", "x", "k"), Lookup::Hit(bytes(90)));
        assert_eq!(c.get("t1", "x", "k"), Lookup::Miss);
        assert_eq!(c.get("t7", "x", "k"), Lookup::Hit(bytes(90)));
        c.forget("t7", "x");
        c.forget("t0", "x");
        assert_eq!(c.bytes(), c.per_tenant.values().sum::<usize>());
    }

    #[test]
    fn off_means_no_cache_and_no_load() {
        let mut c = CodeCaches::new(0);
        assert_eq!(c.get("a", "t", "k"), Lookup::Hit(Bytes::new()));
    }

    #[test]
    fn a_cache_is_bounded_by_its_source() {
        assert!(max_cache_len(10) < 128 << 10);
        assert!(max_cache_len(600 << 10) >= 600 << 10);
    }
}
