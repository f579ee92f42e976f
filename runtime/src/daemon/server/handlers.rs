//! One handler per endpoint, acting on the typed requests that `daemon::api` parses (every refusal that the
//! request alone decides was made there). Health, metrics and the log fan-out live here too.

use super::*;

/// A task in `GET .../tasks`, with its settings as they apply (the defaults filled in).
pub(super) fn task_json(info: &TaskInfo, default_timeout: Duration) -> serde_json::Value {
    let model = info.settings.model.as_deref().unwrap_or("taskcell");
    let timeout_ms = info.settings.timeout_ms.unwrap_or(default_timeout.as_millis() as u64);
    serde_json::json!({"task": info.task, "sha256": info.sha256, "size": info.size, "updated": info.updated, "model": model, "timeout_ms": timeout_ms})
}

impl Server {
    /// Answer one request; `access` is what its listener and token let it reach (checked already, see
    /// `wire::authorize`), which only the log stream still needs: a tenant's token follows its tenant's events.
    pub(super) fn handle(&mut self, key: Key, req: Request, access: Access) {
        let request_id = req.request_id.clone().unwrap_or_else(|| self.new_request_id());
        let keep = req.keep_alive;
        let request = match api::parse(&req) {
            Ok(r) => r,
            Err(e) => {
                if e.refused_run {
                    self.metrics.invocation("bad_request");
                }
                return self.respond(key, &request_id, keep, e.response());
            }
        };
        match request {
            ApiRequest::Health => {
                let body = self.health_json();
                self.respond(key, &request_id, keep, Response::json(200, body));
            }
            ApiRequest::Metrics => {
                let text = self.metrics.render(&self.gauges());
                let mut r = Response::json(200, text);
                r.content_type = crate::daemon::metrics::CONTENT_TYPE;
                self.respond(key, &request_id, keep, r);
            }
            ApiRequest::Logs { tenant } => {
                let tenant = match access {
                    Access::Tenant(own) => Some(own),
                    Access::Operator => tenant,
                };
                self.subscribe(key, &request_id, tenant)
            }
            ApiRequest::RunAdhoc { tenant, source, data, settings } => {
                let timeout = match self.check_settings(&settings) {
                    Ok(timeout) => timeout,
                    Err(r) => {
                        self.metrics.invocation("bad_request");
                        return self.respond(key, &request_id, keep, r);
                    }
                };
                let code = code_key(None, settings.model.as_deref(), &store::sha256_hex(&source));
                let job = Job::Run { task: None, key: code, source, data, model: settings.model, timeout, http: None };
                self.invoke(key, request_id, keep, tenant, job, Instant::now());
            }
            ApiRequest::ListTasks { tenant } => {
                let response = match self.store.list(&tenant) {
                    Ok(list) => {
                        let tasks: Vec<serde_json::Value> = list.iter().map(|t| task_json(t, self.config.timeout)).collect();
                        Response::json(200, serde_json::json!({ "tasks": tasks }).to_string())
                    }
                    Err(e) => Response::error(500, "internal", &format!("listing tasks: {}", crate::error_chain(&e)), None),
                };
                self.respond(key, &request_id, keep, response);
            }
            ApiRequest::GetTask { tenant, task } => {
                let response = match self.store.get(&tenant, &task) {
                    Ok(Some((info, source))) => Response {
                        status: 200,
                        content_type: "application/javascript",
                        headers: vec![("ETag", format!("\"{}\"", info.sha256))],
                        body: source,
                    },
                    Ok(None) => Response::error(404, "not_found", &format!("tenant {tenant} has no task {task}"), None),
                    Err(e) => Response::error(500, "internal", &crate::error_chain(&e), None),
                };
                self.respond(key, &request_id, keep, response);
            }
            // The syntax check runs in the tenant's sandbox; storing happens when it answers `Compiled`.
            ApiRequest::PutTask { tenant, task, source, settings } => match self.check_settings(&settings) {
                Ok(timeout) => self.invoke(key, request_id, keep, tenant, Job::Compile { task, source, settings, timeout }, Instant::now()),
                Err(r) => self.respond(key, &request_id, keep, r),
            },
            ApiRequest::DeleteTask { tenant, task } => {
                self.send_store_job(StoreJob::Delete { conn: key, keep_alive: keep, request_id, tenant, task, existed: None })
            }
            ApiRequest::RunTask { tenant, task, data } => self.run_task(key, request_id, keep, tenant, task, data, None),
            ApiRequest::Http { tenant, task, http, body } => self.run_task(key, request_id, keep, tenant, task, body, Some(http)),
            ApiRequest::ListSecrets { tenant } => {
                let list: Vec<serde_json::Value> = self
                    .secrets
                    .list(&tenant)
                    .into_iter()
                    .map(|(secret, updated)| serde_json::json!({"secret": secret, "updated": updated}))
                    .collect();
                let response = match self.secrets.unavailable() {
                    Some(why) => Response::error(503, "overloaded", &format!("secrets are unavailable: {why}"), None),
                    None => Response::json(200, serde_json::json!({ "secrets": list }).to_string()),
                };
                self.respond(key, &request_id, keep, response);
            }
            ApiRequest::PutSecret { tenant, name, value } => {
                let updated = logs::now_rfc3339();
                match self.secrets.set(&tenant, &name, value, updated) {
                    Ok((created, updated, write)) => {
                        let body = serde_json::json!({"tenant": tenant, "secret": name, "updated": updated}).to_string();
                        let response = Response::json(if created { 201 } else { 200 }, body);
                        let dir = self.secrets.dir().to_path_buf();
                        self.send_store_job(StoreJob::WriteSecrets { conn: key, keep_alive: keep, request_id, dir, write, response });
                    }
                    Err(why) => {
                        let response = match self.secrets.unavailable() {
                            Some(_) => Response::error(503, "overloaded", &format!("secrets are unavailable: {why}"), None),
                            None => Response::error(400, "bad_request", &why, None),
                        };
                        self.respond(key, &request_id, keep, response);
                    }
                }
            }
            ApiRequest::DeleteSecret { tenant, name } => match self.secrets.remove(&tenant, &name) {
                Some(write) => {
                    let response = Response { status: 204, content_type: "application/json", headers: Vec::new(), body: Bytes::new() };
                    let dir = self.secrets.dir().to_path_buf();
                    self.send_store_job(StoreJob::WriteSecrets { conn: key, keep_alive: keep, request_id, dir, write, response });
                }
                None => self.respond(
                    key,
                    &request_id,
                    keep,
                    Response::error(404, "not_found", &format!("tenant {tenant} has no secret {name}"), None),
                ),
            },
            ApiRequest::GetEgress { tenant } => {
                let body = self.egress_json(&tenant);
                self.respond(key, &request_id, keep, Response::json(200, body));
            }
            // Written durably off the loop; in force once answered (see `collect_store_results`).
            ApiRequest::PutEgress { tenant, allow } => {
                self.send_store_job(StoreJob::PutEgress { conn: key, keep_alive: keep, request_id, tenant, allow })
            }
        }
    }

    /// The known models: the built-in ones and the operator's compilers found at start.
    pub(super) fn model_known(&self, model: &str) -> bool {
        crate::daemon::BUILTIN_MODELS.contains(&model) || self.config.compilers.iter().any(|m| m == model)
    }

    /// A task's or a run's settings against the operator's models and limits: the invocation's time limit, or
    /// the 400 that refuses them.
    pub(super) fn check_settings(&self, settings: &TaskSettings) -> Result<Duration, Response> {
        if let Some(model) = settings.model.as_deref().filter(|m| !self.model_known(m)) {
            let known: Vec<&str> =
                crate::daemon::BUILTIN_MODELS.iter().copied().chain(self.config.compilers.iter().map(String::as_str)).collect();
            return Err(Response::error(
                400,
                "bad_request",
                &format!("unknown model {model:?}; the models are {}", known.join(", ")),
                None,
            ));
        }
        let max = self.config.max_timeout.as_millis() as u64;
        match settings.timeout_ms {
            Some(ms) if ms == 0 || ms > max => {
                Err(Response::error(400, "bad_request", &format!("timeout_ms {ms} is out of range: 1 to {max}"), None))
            }
            Some(ms) => Ok(Duration::from_millis(ms)),
            None => Ok(self.config.timeout),
        }
    }

    /// A deployed task's run: on `/run` (`http` none, `data` the input as JSON) or on the HTTP endpoint (`data`
    /// the request body).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn run_task(
        &mut self,
        key: Key,
        request_id: String,
        keep: bool,
        tenant: String,
        task: String,
        data: Bytes,
        http: Option<crate::HttpRequestMeta>,
    ) {
        match self.store.get(&tenant, &task) {
            Ok(Some((info, source))) => {
                let model = info.settings.model;
                let timeout = info.settings.timeout_ms.map_or(self.config.timeout, Duration::from_millis);
                let code = code_key(Some(&task), model.as_deref(), &info.sha256);
                let job = Job::Run { key: code, task: Some(task), source, data, model, timeout, http };
                self.invoke(key, request_id, keep, tenant, job, Instant::now());
            }
            Ok(None) => {
                self.metrics.invocation("not_found");
                self.respond(
                    key,
                    &request_id,
                    keep,
                    Response::error(404, "not_found", &format!("tenant {tenant} has no task {task}"), None),
                )
            }
            Err(e) => self.respond(key, &request_id, keep, Response::error(500, "internal", &crate::error_chain(&e), None)),
        }
    }

    pub(super) fn subscribe(&mut self, key: Key, request_id: &str, tenant: Option<String>) {
        if self.subscribers.len() >= self.config.max_log_subscribers {
            let msg = format!("too many log subscribers (the limit is {}); retry later", self.config.max_log_subscribers);
            let r = Response::error(503, "overloaded", &msg, None).header("Retry-After", "1");
            return self.respond(key, request_id, true, r);
        }
        self.metrics.http_request(200);
        let Some(conn) = self.conns.get_mut(key) else { return };
        http::stream_head(&mut conn.output, http::Stamp { request_id, node: &self.config.node_name });
        if let Some(hub) = self.hub.as_mut() {
            hub.follow(key, tenant.as_deref());
        }
        conn.state = ConnState::Streaming { tenant, dropped: 0 };
        conn.input.clear();
        self.subscribers.insert(key);
        self.flush(key);
    }

    /// Whether an event would reach anyone: this node's subscribers or the log hub.
    fn events_wanted(&self) -> bool {
        !self.subscribers.is_empty() || self.hub.as_ref().is_some_and(|h| h.publishes())
    }

    pub(super) fn publish(&mut self, tenant: &str, task: Option<&str>, request_id: Option<&str>, level: &str, message: &str) {
        if !self.events_wanted() {
            return;
        }
        let line = logs::event_line(tenant, task, request_id, level, message);
        self.publish_line(tenant, &line);
    }

    /// One of this node's finished event lines, stamped with the node's name, to every subscriber of `tenant`'s
    /// events here and to the log hub. This node's subscribers have its own events from here, never from the
    /// hub (the subscriber thread skips them), so that each arrives once, and even while the hub is away.
    pub(super) fn publish_line(&mut self, tenant: &str, line: &[u8]) {
        if !self.events_wanted() {
            return;
        }
        let line = logs::with_node(line, &self.config.node_name);
        if let Some(hub) = self.hub.as_mut() {
            hub.offer(tenant, &line);
        }
        self.fan_out(tenant, &line);
    }

    /// `count` of `tenant`'s events were lost before they got here (from another node, through the hub):
    /// each of its subscribers is told, as for its own drops, before its next event.
    pub(super) fn note_dropped(&mut self, tenant: &str, count: u64) {
        for key in self.subscribers.iter().copied().collect::<Vec<Key>>() {
            let Some(conn) = self.conns.get_mut(key) else { continue };
            let ConnState::Streaming { tenant: filter, dropped } = &mut conn.state else { continue };
            if filter.as_deref().is_none_or(|f| f == tenant) {
                *dropped += count;
                self.log_dropped += count;
            }
        }
    }

    /// One finished line (with its `node`) to every subscriber of `tenant`'s events on this node.
    pub(super) fn fan_out(&mut self, tenant: &str, line: &[u8]) {
        if self.subscribers.is_empty() {
            return;
        }
        let subs: Vec<Key> = self.subscribers.iter().copied().collect();
        for key in subs {
            let Some(conn) = self.conns.get_mut(key) else { continue };
            let ConnState::Streaming { tenant: filter, dropped } = &mut conn.state else { continue };
            if filter.as_deref().is_some_and(|f| f != tenant) {
                continue;
            }
            if conn.output.len() > SUBSCRIBER_BACKLOG {
                *dropped += 1;
                self.log_dropped += 1;
                continue;
            }
            if *dropped > 0 {
                http::chunk(&mut conn.output, &logs::dropped_line(*dropped));
                *dropped = 0;
            }
            http::chunk(&mut conn.output, line);
            self.flush(key);
        }
    }

    pub(super) fn health_json(&self) -> String {
        let idle = self.pool.len();
        serde_json::json!({
            "status": if self.draining.is_some() { "draining" } else { "ok" },
            "pool": {
                "size": self.sizing.target,
                "idle": idle,
                "starting": self.starting,
                "sizing": self.sizing.health(&self.config),
            },
            "sandboxes": { "tenants": self.tenants.len(), "total": self.sbs.len() },
            "invocations_in_flight": self.invocations.len(),
            "queued": self.pending.len(),
            "connections": self.conns.len(),
            "uptime_s": self.started.elapsed().as_secs(),
            "last_spawn_error": self.last_spawn_error,
            "code_caches": {
                "bytes": self.code_caches.bytes(),
                "limit": self.config.code_cache_bytes,
                "tenant_limit": self.code_caches.tenant_limit(),
                "largest_tenant_bytes": self.code_caches.largest_tenant_bytes(),
            },
            "log_hub": self.hub.as_ref().map(|h| h.health(&self.config)),
            "store": self.store_status.as_ref().map(|s| s.health()),
            "cpus": self.cpus.map(|c| serde_json::json!({"all": c.all.list(), "reserved": c.reserved.list(), "batch": c.batch.list()})),
        })
        .to_string()
    }

    pub(super) fn gauges(&self) -> Gauges {
        Gauges {
            pool_target: self.sizing.target as u64,
            pool_idle: self.pool.len() as u64,
            tenant_sandboxes: self.tenants.len() as u64,
            connections_open: self.conns.len() as u64,
            log_subscribers: self.subscribers.len() as u64,
            log_events_dropped: self.log_dropped,
            egress_open: self.open_egress_tunnels() as u64,
            log_hub: self.hub.as_ref().map(|h| h.stats()),
            store: self.store_status.as_ref().map(|s| s.gauges()),
        }
    }
}
