//! The helper threads: the store thread (deploys and egress allow-lists written and fsynced, deletes, code
//! caches read from disk), the reaper thread (dead sandboxes' cgroups removed) and the resolver threads (egress
//! names looked up), and the messages to and from them; and the loop's end of the log hub's threads
//! (`daemon::log_hub`: this node's events out to the hub, the other nodes' in).

use super::*;

/// Work for the store thread, and its answers.
pub(super) enum StoreJob {
    /// `cache`: the V8 code cache the syntax check made (empty if none).
    Put {
        conn: Key,
        keep_alive: bool,
        request_id: String,
        tenant: String,
        task: String,
        source: Bytes,
        settings: TaskSettings,
        cache: Bytes,
        /// `--store`: whether the database had no such task before (it decides `201` or `200`).
        created: Option<bool>,
    },
    Delete {
        conn: Key,
        keep_alive: bool,
        request_id: String,
        tenant: String,
        task: String,
        /// `--store`: whether the database had the task (it decides `204` or `404`).
        existed: Option<bool>,
    },
    /// Read a task's code cache from disk (a version the loop does not hold in memory).
    LoadCache { tenant: String, task: String, sha: String, key: String },
    /// Write a tenant's secrets file (sealed values only), then send `response`.
    WriteSecrets { conn: Key, keep_alive: bool, request_id: String, dir: std::path::PathBuf, write: secrets::FileWrite, response: Response },
    /// Replace a tenant's egress allow-list (entries already checked).
    PutEgress { conn: Key, keep_alive: bool, request_id: String, tenant: String, allow: Vec<String> },
}

pub(super) struct StoreDone {
    /// The answer to a client's request, if the job was one.
    pub(super) reply: Option<(Key, bool, String, Response)>,
    pub(super) code_cache: CodeCacheUpdate,
    /// An allow-list now stored: in force from the moment its answer is sent.
    pub(super) egress: Option<(String, Vec<String>)>,
    /// `--store`: a tenant's secrets file as it is on disk, to hold again (a change the database refused).
    pub(super) secrets: Option<secrets::FileWrite>,
}

/// What a finished store job changes in the loop's code caches.
pub(super) enum CodeCacheUpdate {
    None,
    /// A task stored: its code cache, for the key its Runs will carry.
    Set {
        tenant: String,
        task: String,
        key: String,
        cache: Bytes,
    },
    /// A task deleted (or stored without a cache): none any more.
    Forget {
        tenant: String,
        task: String,
    },
}

/// The store thread's jobs, the database thread's (`--store`), their answers, and the follower's changes.
type StoreThreads = (Sender<StoreJob>, Option<Sender<StoreJob>>, Receiver<StoreDone>, Option<Receiver<shared_store::Applied>>);

pub(super) fn start_store_thread(store: Arc<Store>, waker: Arc<Waker>, shared: Option<SharedParts>) -> StoreThreads {
    let (jobs_tx, jobs) = mpsc::channel::<StoreJob>();
    let (done_tx, done) = mpsc::channel::<StoreDone>();
    let (db_jobs, changes) = match shared {
        Some(SharedParts { writer, follower, client }) => {
            let status = follower.status.clone();
            let db_jobs = start_database_thread(writer, status, jobs_tx.clone(), done_tx.clone(), waker.clone());
            (Some(db_jobs), Some(start_follower_thread(follower, client, waker.clone())))
        }
        None => (None, None),
    };
    std::thread::Builder::new()
        .name("store".into())
        .spawn(move || {
            for job in jobs {
                let done = match job {
                    StoreJob::Put { conn, keep_alive, request_id, tenant, task, source, settings, cache, created: shared } => {
                        let (response, code_cache) = match store.put_with(&tenant, &task, &source, &settings) {
                            Ok((info, created)) => {
                                let created = shared.unwrap_or(created);
                                let body = serde_json::json!({"tenant": tenant, "task": task, "sha256": info.sha256, "size": info.size});
                                let response = Response::json(if created { 201 } else { 200 }, body.to_string())
                                    .header("ETag", format!("\"{}\"", info.sha256));
                                let key = code_key(Some(&task), settings.model.as_deref(), &info.sha256);
                                // Kept on disk too, so that a restart does not forget it (best effort).
                                if cache.is_empty() {
                                    store.forget_code_cache(&tenant, &task);
                                } else if let Err(e) = store.put_code_cache(&tenant, &task, &info.sha256, &cache) {
                                    eprintln!("taskcell: {}", crate::error_chain(&e));
                                }
                                (response, CodeCacheUpdate::Set { tenant, task, key, cache })
                            }
                            Err(e) => (
                                Response::error(500, "internal", &format!("storing the task: {}", crate::error_chain(&e)), None),
                                CodeCacheUpdate::None,
                            ),
                        };
                        StoreDone { reply: Some((conn, keep_alive, request_id, response)), code_cache, egress: None, secrets: None }
                    }
                    StoreJob::Delete { conn, keep_alive, request_id, tenant, task, existed } => {
                        let response = match store.delete(&tenant, &task).map(|local| existed.unwrap_or(local)) {
                            Ok(true) => Response { status: 204, content_type: "application/json", headers: Vec::new(), body: Bytes::new() },
                            Ok(false) => Response::error(404, "not_found", &format!("tenant {tenant} has no task {task}"), None),
                            Err(e) => Response::error(500, "internal", &format!("deleting the task: {}", crate::error_chain(&e)), None),
                        };
                        StoreDone {
                            reply: Some((conn, keep_alive, request_id, response)),
                            code_cache: CodeCacheUpdate::Forget { tenant, task },
                            egress: None,
                            secrets: None,
                        }
                    }
                    StoreJob::LoadCache { tenant, task, sha, key } => {
                        let cache = store.code_cache(&tenant, &task, &sha).unwrap_or_default();
                        StoreDone {
                            reply: None,
                            code_cache: CodeCacheUpdate::Set { tenant, task, key, cache },
                            egress: None,
                            secrets: None,
                        }
                    }
                    StoreJob::WriteSecrets { conn, keep_alive, request_id, dir, write, response } => {
                        let response = match secrets::write_file(&dir, &write) {
                            Ok(()) => response,
                            Err(e) => Response::error(500, "internal", &format!("storing the secrets: {}", crate::error_chain(&e)), None),
                        };
                        StoreDone {
                            reply: Some((conn, keep_alive, request_id, response)),
                            code_cache: CodeCacheUpdate::None,
                            egress: None,
                            secrets: None,
                        }
                    }
                    StoreJob::PutEgress { conn, keep_alive, request_id, tenant, allow } => match store.put_egress(&tenant, &allow) {
                        Ok(()) => {
                            let response = Response::json(200, serde_json::json!({ "allow": allow }).to_string());
                            StoreDone {
                                reply: Some((conn, keep_alive, request_id, response)),
                                code_cache: CodeCacheUpdate::None,
                                egress: Some((tenant, allow)),
                                secrets: None,
                            }
                        }
                        Err(e) => {
                            let response = Response::error(
                                500,
                                "internal",
                                &format!("storing the egress allow-list: {}", crate::error_chain(&e)),
                                None,
                            );
                            StoreDone {
                                reply: Some((conn, keep_alive, request_id, response)),
                                code_cache: CodeCacheUpdate::None,
                                egress: None,
                                secrets: None,
                            }
                        }
                    },
                };
                if done_tx.send(done).is_err() {
                    return;
                }
                let _ = waker.wake();
            }
        })
        .expect("spawning the store thread");
    (jobs_tx, db_jobs, done, changes)
}

/// `--store`: the database thread commits each deploy, delete, allow-list and secrets file, then hands it to the store thread to apply
/// locally and answer; one the database cannot take is answered here (503 while it cannot be reached).
fn start_database_thread(
    mut writer: shared_store::Writer,
    status: Arc<shared_store::Status>,
    store_jobs: Sender<StoreJob>,
    done_tx: Sender<StoreDone>,
    waker: Arc<Waker>,
) -> Sender<StoreJob> {
    let (jobs_tx, jobs) = mpsc::channel::<StoreJob>();
    std::thread::Builder::new()
        .name("database".into())
        .spawn(move || {
            for mut job in jobs {
                let outcome = match &mut job {
                    StoreJob::Put { tenant, task, source, settings, created, .. } => {
                        writer.put_task(tenant, task, source, settings).map(|c| *created = Some(c))
                    }
                    StoreJob::Delete { tenant, task, existed, .. } => writer.delete_task(tenant, task).map(|e| *existed = Some(e)),
                    StoreJob::PutEgress { tenant, allow, .. } => writer.put_egress(tenant, allow),
                    StoreJob::WriteSecrets { write, .. } => writer.put_secrets(write),
                    StoreJob::LoadCache { .. } => Ok(()),
                };
                // A delete of nothing changed nothing (404); a cache load is no change at all.
                let counter = if outcome.is_ok() { &status.committed } else { &status.refused };
                if !matches!(job, StoreJob::LoadCache { .. } | StoreJob::Delete { existed: Some(false), .. }) {
                    counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                let failed = match outcome {
                    Ok(()) => {
                        if store_jobs.send(job).is_err() {
                            return;
                        }
                        continue;
                    }
                    Err(e) => e,
                };
                // The loop changed its secrets before asking: it holds the file on disk again.
                let mut secrets = None;
                let (conn, keep_alive, request_id) = match job {
                    StoreJob::Put { conn, keep_alive, request_id, .. }
                    | StoreJob::Delete { conn, keep_alive, request_id, .. }
                    | StoreJob::PutEgress { conn, keep_alive, request_id, .. } => (conn, keep_alive, request_id),
                    StoreJob::WriteSecrets { conn, keep_alive, request_id, dir, write, .. } => {
                        match secrets::read_file(&dir, &write.tenant) {
                            Ok(file) => secrets = Some(file),
                            Err(e) => eprintln!("taskcell: store: {}", crate::error_chain(&e)),
                        }
                        (conn, keep_alive, request_id)
                    }
                    StoreJob::LoadCache { .. } => continue,
                };
                let why = crate::error_chain(&failed);
                eprintln!("taskcell: store: {why}");
                let response = if failed.unreachable() {
                    Response::error(
                        503,
                        "store_unavailable",
                        &format!("the shared store cannot be reached, so deploys are refused until it is back (deployed tasks are still served): {why}"),
                        None,
                    )
                    .header("Retry-After", "1")
                } else {
                    Response::error(500, "internal", &format!("the shared store refused the change: {why}"), None)
                };
                let done = StoreDone { reply: Some((conn, keep_alive, request_id, response)), code_cache: CodeCacheUpdate::None, egress: None, secrets };
                if done_tx.send(done).is_err() {
                    return;
                }
                let _ = waker.wake();
            }
        })
        .expect("spawning the database thread");
    jobs_tx
}

/// `--store`: the follower on a thread of its own, its changes (already applied locally) to the loop.
fn start_follower_thread(
    follower: shared_store::Follower,
    client: Option<postgres::Client>,
    waker: Arc<Waker>,
) -> Receiver<shared_store::Applied> {
    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new()
        .name("store-follower".into())
        .spawn(move || {
            follower.run(
                |applied| {
                    let sent = tx.send(applied).is_ok();
                    let _ = waker.wake();
                    sent
                },
                client,
            )
        })
        .expect("spawning the store follower thread");
    rx
}

/// Threads that look egress names up (getaddrinfo blocks for as long as DNS takes).
pub(super) const RESOLVER_THREADS: usize = 2;

pub(super) struct ResolveJob {
    pub(super) tunnel: Key,
    pub(super) name: String,
}

pub(super) struct ResolveDone {
    pub(super) tunnel: Key,
    pub(super) result: Result<Vec<std::net::IpAddr>, String>,
}

pub(super) fn start_resolver_threads(threads: usize, waker: Arc<Waker>) -> (Sender<ResolveJob>, Receiver<ResolveDone>) {
    use std::net::ToSocketAddrs;
    let (jobs_tx, jobs) = mpsc::channel::<ResolveJob>();
    let (done_tx, done) = mpsc::channel::<ResolveDone>();
    let jobs = Arc::new(std::sync::Mutex::new(jobs));
    for i in 0..threads.max(1) {
        let (jobs, done_tx, waker) = (jobs.clone(), done_tx.clone(), waker.clone());
        std::thread::Builder::new()
            .name(format!("resolver-{i}"))
            .spawn(move || loop {
                let job = match jobs.lock() {
                    Ok(rx) => rx.recv(),
                    Err(_) => return,
                };
                let Ok(ResolveJob { tunnel, name }) = job else { return };
                let result = (name.as_str(), 0).to_socket_addrs().map(|addrs| addrs.map(|a| a.ip()).collect()).map_err(|e| e.to_string());
                if done_tx.send(ResolveDone { tunnel, result }).is_err() {
                    return;
                }
                let _ = waker.wake();
            })
            .expect("spawning a resolver thread");
    }
    (jobs_tx, done)
}

pub(super) fn start_reaper_thread(batch: Option<jailer::sched::CpuSet>) -> (Sender<jailer::Sandbox>, std::thread::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel::<jailer::Sandbox>();
    let thread = std::thread::Builder::new()
        .name("reaper".into())
        .spawn(move || {
            // Removing cgroups is kernel work that waits and holds locks: batch work, off the reserved CPUs.
            if let Some(batch) = &batch {
                let _ = jailer::sched::set_affinity(0, batch);
            }
            for sandbox in rx {
                if let Err(e) = sandbox.destroy() {
                    eprintln!("taskcell: removing a sandbox's cgroup: {}", crate::error_chain(&e));
                }
            }
        })
        .expect("spawning the reaper thread");
    (tx, thread)
}

impl Server {
    pub(super) fn send_store_job(&mut self, job: StoreJob) {
        let to = match (&self.db_jobs, &job) {
            (Some(db), StoreJob::Put { .. } | StoreJob::Delete { .. } | StoreJob::PutEgress { .. } | StoreJob::WriteSecrets { .. }) => db,
            _ => &self.store_jobs,
        };
        if to.send(job).is_ok() {
            self.store_pending += 1;
        }
    }

    /// `--store`: other nodes' changes, already in the local store: the code caches made for the old versions go.
    pub(super) fn collect_store_changes(&mut self) {
        let Some(changes) = &self.store_changes else { return };
        for change in changes.try_iter().collect::<Vec<_>>() {
            match change {
                shared_store::Applied::Task { tenant, task } => self.code_caches.forget(&tenant, &task),
                shared_store::Applied::Egress { tenant, allow } => self.set_egress_list(tenant, allow),
                shared_store::Applied::Secrets(file) => self.secrets.replace(&file),
            }
        }
    }

    pub(super) fn collect_store_results(&mut self) {
        while let Ok(done) = self.store_done.try_recv() {
            self.store_pending = self.store_pending.saturating_sub(1);
            match done.code_cache {
                CodeCacheUpdate::None => {}
                CodeCacheUpdate::Set { tenant, task, key, cache } => {
                    let waiting = self.cache_waits.remove(&(tenant.clone(), task.clone())).unwrap_or_default();
                    self.code_caches.set(tenant.clone(), task, key, cache);
                    for w in waiting {
                        // Its sandbox may have died meanwhile: then it is a new invocation for the tenant.
                        let alive = self.sbs.get(w.sb).is_some_and(|s| s.killed.is_none()) && self.tenants.get(&tenant) == Some(&w.sb);
                        if alive {
                            self.dispatch(w.sb, w.conn, w.keep_alive, w.request_id, tenant.clone(), w.job, w.cold, w.started);
                        } else {
                            self.invoke(w.conn, w.request_id, w.keep_alive, tenant.clone(), w.job, w.started);
                        }
                    }
                }
                CodeCacheUpdate::Forget { tenant, task } => self.code_caches.forget(&tenant, &task),
            }
            if let Some((tenant, allow)) = done.egress {
                self.set_egress_list(tenant, allow);
            }
            if let Some(file) = done.secrets {
                self.secrets.replace(&file);
            }
            if let Some((conn, keep_alive, request_id, response)) = done.reply {
                self.respond(conn, &request_id, keep_alive, response);
            }
        }
    }
}

/// Other nodes' events taken from the log hub's subscriber thread in one turn of the loop.
const HUB_EVENTS_PER_TURN: usize = 256;

/// The loop's ends of the log hub's threads (see `daemon::log_hub`): the publisher of this node's events
/// (`--log-hub-in`) and the subscriber to every other node's (`--log-hub-out`).
pub(super) struct HubLink {
    publisher: Option<log_hub::Publisher>,
    subscriber: Option<log_hub::Subscriber>,
    /// The publisher's counts (zero without `--log-hub-in`).
    stats: Arc<log_hub::Stats>,
    /// Each `/v1/logs` stream's subscription at the hub, taken back when the stream closes.
    follows: HashMap<Key, Vec<u8>>,
    /// More events were waiting than one turn takes: poll without sleeping.
    pub(super) again: bool,
}

impl HubLink {
    pub(super) fn start(config: &Config, waker: &Arc<Waker>) -> Result<Option<HubLink>, log_hub::HubError> {
        if config.log_hub_in.is_none() && config.log_hub_out.is_none() {
            return Ok(None);
        }
        let ctx = zmq::Context::new();
        let instance = log_hub::instance_id(&config.node_name);
        let publisher = match &config.log_hub_in {
            Some(at) => Some(log_hub::Publisher::start(&ctx, at, &instance, &config.node_name)?),
            None => None,
        };
        let subscriber = match &config.log_hub_out {
            Some(at) => Some(log_hub::Subscriber::start(&ctx, at, &instance, waker.clone())?),
            None => None,
        };
        let stats = publisher.as_ref().map(|p| p.stats.clone()).unwrap_or_default();
        eprintln!(
            "taskcell: log hub: publishing to {}, following {}",
            config.log_hub_in.as_deref().unwrap_or("nowhere"),
            config.log_hub_out.as_deref().unwrap_or("nothing")
        );
        Ok(Some(HubLink { publisher, subscriber, stats, follows: HashMap::new(), again: false }))
    }

    pub(super) fn publishes(&self) -> bool {
        self.publisher.is_some()
    }

    pub(super) fn offer(&mut self, tenant: &str, line: &[u8]) {
        if let Some(p) = self.publisher.as_mut() {
            p.offer(tenant, line);
        }
    }

    /// A new `/v1/logs` stream: its tenant's events (or everyone's) from the other nodes too.
    pub(super) fn follow(&mut self, key: Key, tenant: Option<&str>) {
        let Some(sub) = &self.subscriber else { return };
        let topic = tenant.map(log_hub::topic).unwrap_or_default();
        sub.follow(log_hub::Follow::Subscribe(topic.clone()));
        self.follows.insert(key, topic);
    }

    pub(super) fn unfollow(&mut self, key: Key) {
        if let (Some(sub), Some(topic)) = (&self.subscriber, self.follows.remove(&key)) {
            sub.follow(log_hub::Follow::Unsubscribe(topic));
        }
    }

    pub(super) fn stop(&mut self) {
        if let Some(p) = self.publisher.as_mut() {
            p.stop();
        }
        if let Some(s) = self.subscriber.as_mut() {
            s.stop();
        }
    }

    /// Published events the hub did not get, and whether it is connected now.
    pub(super) fn stats(&self) -> (u64, bool) {
        (self.stats.dropped.load(std::sync::atomic::Ordering::Relaxed), self.stats.connected.load(std::sync::atomic::Ordering::Relaxed))
    }

    pub(super) fn health(&self, config: &Config) -> serde_json::Value {
        let (dropped, connected) = self.stats();
        serde_json::json!({
            "in": config.log_hub_in,
            "out": config.log_hub_out,
            "connected": self.publishes().then_some(connected),
            "dropped": dropped,
        })
    }
}

impl Server {
    /// Other nodes' events, at most a turn's worth, to this node's subscribers (each checked by the
    /// subscriber thread already: tenant, shape, not this node's own).
    pub(super) fn collect_hub_events(&mut self) {
        let Some(hub) = self.hub.as_mut() else { return };
        let Some(sub) = &hub.subscriber else { return };
        let batch: Vec<log_hub::Incoming> = sub.events.try_iter().take(HUB_EVENTS_PER_TURN).collect();
        hub.again = batch.len() == HUB_EVENTS_PER_TURN;
        for event in batch {
            if event.dropped_before > 0 {
                self.note_dropped(&event.tenant, event.dropped_before);
            }
            self.fan_out(&event.tenant, &event.line);
        }
    }
}
