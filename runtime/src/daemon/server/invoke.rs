//! Invocations: a run or a deploy's syntax check goes to the tenant's sandbox (`dispatch`), waits for a
//! code cache being loaded if it needs one, and ends in one answer (`complete`) or at its deadline.

use super::*;

pub(super) enum Job {
    /// `model` is `None` for `taskcell`; `http` is set for the HTTP endpoint (then `data` is the request body).
    Run {
        task: Option<String>,
        key: String,
        source: Bytes,
        data: Bytes,
        model: Option<String>,
        timeout: Duration,
        http: Option<crate::HttpRequestMeta>,
    },
    /// A deploy's check by the model's compiler; the settings are stored with the source if it passes.
    Compile { task: String, source: Bytes, settings: TaskSettings, timeout: Duration },
}

impl Job {
    fn timeout(&self) -> Duration {
        match self {
            Job::Run { timeout, .. } | Job::Compile { timeout, .. } => *timeout,
        }
    }
}

/// The name of a version of compiled code inside a sandbox: `task:<name>:<sha256>` or `adhoc:<sha256>`, with
/// `@<model>` after `task:<name>` or `adhoc` for a model other than `taskcell` (the same source compiles to
/// another function under another model). The sha256 is always last.
pub(super) fn code_key(task: Option<&str>, model: Option<&str>, sha256: &str) -> String {
    let base = match task {
        Some(task) => format!("task:{task}"),
        None => "adhoc".to_string(),
    };
    match model {
        None | Some("taskcell") => format!("{base}:{sha256}"),
        Some(model) => format!("{base}@{model}:{sha256}"),
    }
}

/// What answer an invocation waits for (besides an `Error`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Expect {
    /// A `Result`: a run's envelope.
    Result,
    /// A `Compiled`: a deploy's check.
    Compiled,
    /// A `Result` (the body of a 200) or an `HttpResponse`: the HTTP endpoint.
    Http,
}

pub(super) struct Invocation {
    pub(super) conn: Key,
    pub(super) keep_alive: bool,
    pub(super) request_id: String,
    pub(super) tenant: String,
    pub(super) task: Option<String>,
    pub(super) sb: Key,
    pub(super) cold: bool,
    pub(super) started: Instant,
    pub(super) deadline: Instant,
    pub(super) logs: Captured,
    /// A deploy's source and settings, stored once the check passes.
    pub(super) compile: Option<(Bytes, TaskSettings)>,
    /// The compiled-code key a Run used, forgotten again if the code fails to compile.
    pub(super) key: Option<String>,
    pub(super) expect: Expect,
    /// Its own time limit (the task's `timeout_ms`, or the daemon's).
    pub(super) timeout: Duration,
    /// Egress connections it has asked for past the allow-list (at most `--egress-max-conns`).
    pub(super) egress_conns: usize,
}

pub(super) struct Pending {
    pub(super) conn: Key,
    pub(super) keep_alive: bool,
    pub(super) request_id: String,
    pub(super) tenant: String,
    pub(super) job: Job,
    pub(super) started: Instant,
    pub(super) give_up: Instant,
}

/// A Run waiting for the store thread to load its task's code cache (see `dispatch`).
pub(super) struct Deferred {
    pub(super) sb: Key,
    pub(super) conn: Key,
    pub(super) keep_alive: bool,
    pub(super) request_id: String,
    pub(super) job: Job,
    pub(super) cold: bool,
    pub(super) started: Instant,
}

impl Server {
    pub(super) fn invoke(&mut self, conn: Key, request_id: String, keep_alive: bool, tenant: String, job: Job, started: Instant) {
        if self.draining.is_some() {
            self.metrics.invocation("overloaded");
            let r = Response::error(503, "overloaded", "taskcell is shutting down", None).header("Retry-After", "1");
            return self.respond(conn, &request_id, keep_alive, r);
        }
        let (sb, cold) = match self.tenants.get(&tenant).copied() {
            Some(sb) => (sb, false),
            None if self.pending.iter().any(|p| p.tenant == tenant) => {
                // Its first request already waits for a sandbox: this one waits behind it.
                let give_up = Instant::now() + self.config.queue_timeout;
                self.pending.push_back(Pending { conn, keep_alive, request_id, tenant, job, started, give_up });
                return;
            }
            None => match self.note_demand().take_from_pool() {
                Some(sb) => {
                    self.metrics.cold_start(ColdStart::Pool);
                    self.assign(sb, &tenant);
                    (sb, true)
                }
                None => {
                    let give_up = Instant::now() + self.config.queue_timeout;
                    self.pending.push_back(Pending { conn, keep_alive, request_id, tenant, job, started, give_up });
                    self.refill_pool();
                    return;
                }
            },
        };
        self.dispatch(sb, conn, keep_alive, request_id, tenant, job, cold, started);
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn dispatch(
        &mut self,
        sb: Key,
        conn: Key,
        keep_alive: bool,
        request_id: String,
        tenant: String,
        job: Job,
        cold: bool,
        started: Instant,
    ) {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1).max(1);
        let timeout = job.timeout();
        let deadline = Instant::now() + timeout;
        if self.sbs.get(sb).is_some_and(|s| s.outbox.len() > SANDBOX_OUTBOX_LIMIT) {
            self.metrics.invocation("overloaded");
            let msg = "the tenant's sandbox is not taking new invocations (it has stopped reading them)";
            let r = Response::error(503, "overloaded", msg, None).header("Retry-After", "1");
            return self.respond(conn, &request_id, keep_alive, r);
        }
        // A deployed task's first Run in this sandbox carries its code cache, which may still be on disk
        // only (after a restart, or evicted): the store thread reads it, and the Run waits for that (well
        // under a millisecond) rather than the loop reading the disk or the sandbox compiling without it.
        let mut wait_for = None;
        if let Job::Run { task: Some(task), key, .. } = &job {
            let first_here = self.sbs.get(sb).is_some_and(|s| !s.compiled.contains(key));
            if first_here {
                match self.code_caches.get(&tenant, task, key) {
                    Lookup::Hit(_) => {}
                    Lookup::Loading => wait_for = Some(task.clone()),
                    Lookup::Miss => {
                        self.code_caches.loading(&tenant, task, key);
                        let sha = key.rsplit(':').next().unwrap_or_default().to_string();
                        self.send_store_job(StoreJob::LoadCache { tenant: tenant.clone(), task: task.clone(), sha, key: key.clone() });
                        wait_for = Some(task.clone());
                    }
                }
            }
        }
        if let Some(task) = wait_for {
            // In use from now: not the least recently used idle sandbox an eviction or a reclaim would take.
            if let Some(s) = self.sbs.get_mut(sb) {
                s.last_used = Instant::now();
            }
            let waiting = Deferred { sb, conn, keep_alive, request_id, job, cold, started };
            self.cache_waits.entry((tenant, task)).or_default().push(waiting);
            return;
        }
        // The tenant's secrets go ahead of the first invocation that should see a changed set.
        let version = self.secrets.version(&tenant);
        if self.sbs.get(sb).is_some_and(|s| s.secrets_version != version) {
            let frame = Frame::Secrets { secrets: self.secrets.values(&tenant) };
            let s = self.sbs.get_mut(sb).expect("dispatch to a live sandbox");
            if crate::encode(&frame, &mut s.outbox).is_ok() {
                s.secrets_version = version;
            }
        }
        let s = self.sbs.get_mut(sb).expect("dispatch to a live sandbox");
        let (frame, task, compile, code_key, expect) = match job {
            Job::Run { task, key, source, data, model, timeout: _, http } => {
                let send_source = !s.compiled.contains(&key);
                if send_source {
                    s.compiled.insert(key.clone());
                }
                let expect = if http.is_some() { Expect::Http } else { Expect::Result };
                let meta =
                    RunMeta { tenant: tenant.clone(), task: task.clone(), request_id: request_id.clone(), key: key.clone(), model, http };
                // With the source goes the tenant's own code cache for it, if its deploy made one.
                let cache = match (&task, send_source) {
                    (Some(task), true) => match self.code_caches.get(&tenant, task, &key) {
                        Lookup::Hit(cache) => cache,
                        Lookup::Loading | Lookup::Miss => Bytes::new(),
                    },
                    _ => Bytes::new(),
                };
                if !cache.is_empty() {
                    self.metrics.code_cache_sent();
                }
                let source = if send_source { source } else { Bytes::new() };
                (Frame::Run { id, meta, source, cache, data }, task, None, Some(key), expect)
            }
            Job::Compile { task, source, settings, timeout: _ } => {
                let model = settings.model.clone();
                let meta =
                    crate::CompileMeta { tenant: tenant.clone(), task: Some(task.clone()), cache: self.code_caches.enabled(), model };
                (Frame::Compile { id, meta, source: source.clone() }, Some(task), Some((source, settings)), None, Expect::Compiled)
            }
        };
        let Some(s) = self.sbs.get_mut(sb) else { return };
        if crate::encode(&frame, &mut s.outbox).is_err() {
            let r = Response::error(500, "internal", "could not encode the invocation", None);
            return self.respond(conn, &request_id, keep_alive, r);
        }
        s.in_flight.insert(id);
        s.last_used = Instant::now();
        s.served += 1;
        let logs = Captured::default();
        self.invocations.insert(
            id,
            Invocation {
                conn,
                keep_alive,
                request_id,
                tenant,
                task,
                sb,
                cold,
                started,
                deadline,
                logs,
                compile,
                key: code_key,
                expect,
                timeout,
                egress_conns: 0,
            },
        );
        self.deadlines.insert((deadline, id), ());
        if self.cpus.is_some() {
            self.busy_checks.push_back((Instant::now() + cpus::BUSY_WINDOW, id, None, 0));
        }
        // A sandbox with nothing else in flight is waiting: wake it now, so that it works while the loop goes
        // on with the rest of its turn. One still busy with earlier Runs takes the turn's others in one write
        // at its end (it reads them when it is done anyway).
        if self.sbs.get(sb).is_some_and(|s| s.in_flight.len() == 1) {
            self.flush_sandbox(sb);
        } else {
            self.schedule_flush(sb);
        }
    }

    /// Finish an invocation with a response (or a store job, for a deploy that compiled).
    pub(super) fn complete(&mut self, id: u32, outcome: Result<Bytes, (u16, &'static str, String)>) {
        let Some(inv) = self.invocations.remove(&id) else { return };
        self.deadlines.remove(&(inv.deadline, id));
        if let Some(s) = self.sbs.get_mut(inv.sb) {
            s.in_flight.remove(&id);
            s.last_used = Instant::now();
        }
        let elapsed = inv.started.elapsed();
        let logs = inv.logs.finish();
        if let (Some((source, settings)), Ok(cache)) = (&inv.compile, &outcome) {
            // A deploy that compiled: now store it durably, off the loop (with the code cache the check made).
            let job = StoreJob::Put {
                conn: inv.conn,
                keep_alive: inv.keep_alive,
                request_id: inv.request_id,
                tenant: inv.tenant,
                task: inv.task.unwrap_or_default(),
                source: source.clone(),
                settings: settings.clone(),
                cache: cache.clone(),
                created: None,
            };
            self.send_store_job(job);
            return;
        }
        let response = match outcome {
            // On the HTTP endpoint a model's result is the response's body.
            Ok(result) if inv.expect == Expect::Http => {
                self.metrics.invocation("ok");
                self.metrics.observe(elapsed);
                Response::json(200, result)
            }
            Ok(result) => {
                self.metrics.invocation("ok");
                self.metrics.observe(elapsed);
                let mut body = Vec::with_capacity(result.len() + logs.len() + 64);
                body.extend_from_slice(b"{\"result\":");
                body.extend_from_slice(&result);
                body.extend_from_slice(b",\"logs\":");
                body.extend_from_slice(&logs);
                body.extend_from_slice(format!(",\"cold\":{},\"duration_us\":{}}}", inv.cold, elapsed.as_micros()).as_bytes());
                Response::json(200, body)
            }
            Err((status, kind, message)) => {
                self.metrics.invocation(kind);
                self.metrics.observe(elapsed);
                let mut r = Response::error(status, kind, &message, Some(&logs));
                if status == 503 {
                    r = r.header("Retry-After", "1");
                }
                r
            }
        };
        self.respond(inv.conn, &inv.request_id, inv.keep_alive, response);
        self.recycle_if_spent(inv.sb);
    }

    /// Finish an HTTP endpoint invocation with the response its task made (checked by the decoder, bounded by
    /// the caller).
    pub(super) fn complete_http(&mut self, id: u32, status: u16, headers: Vec<(String, String)>, body: Bytes) {
        let Some(inv) = self.invocations.remove(&id) else { return };
        self.deadlines.remove(&(inv.deadline, id));
        if let Some(s) = self.sbs.get_mut(inv.sb) {
            s.in_flight.remove(&id);
            s.last_used = Instant::now();
        }
        self.metrics.invocation("ok");
        self.metrics.observe(inv.started.elapsed());
        let request_id = inv.request_id;
        self.respond_with(inv.conn, status, inv.keep_alive, |out, node, keep| {
            http::write_task_response(out, status, &headers, &body, http::Stamp { request_id: &request_id, node }, keep)
        });
        self.recycle_if_spent(inv.sb);
    }

    pub(super) fn fire_deadlines(&mut self) {
        let now = Instant::now();
        while let Some(((t, id), _)) = self.deadlines.first_key_value() {
            if *t > now {
                break;
            }
            let id = *id;
            self.deadlines.pop_first();
            let Some(inv) = self.invocations.get(&id) else { continue };
            let sb = inv.sb;
            let limit = inv.timeout.as_millis();
            // Killed first, so that the reason recorded is the timeout (completing could recycle it otherwise).
            self.kill_sandbox(sb, KillReason::Timeout);
            self.complete(
                id,
                Err((504, "timeout", format!("the invocation ran past its time limit of {limit} ms; its sandbox was killed"))),
            );
        }
    }
}
