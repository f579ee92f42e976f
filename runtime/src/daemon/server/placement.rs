//! CPU placement (see `daemon::cpus`): a tenant's sandbox runs on every CPU until it is busy, then on the
//! batch CPUs at the boot weight until its tenant has been quiet for a while.

use super::*;

/// CPU weight (cgroup v2 units) of a sandbox booting or waiting in the pool, and of a tenant's.
pub const BOOT_CPU_WEIGHT: u64 = 10;

pub(super) const TENANT_CPU_WEIGHT: u64 = 100;

impl Sb {
    /// Move a tenant's sandbox to the batch CPUs at the pool's boot weight: there it shares the CPUs with
    /// the other busy sandboxes and the pool's boots on an equal footing (at the tenant weight it would
    /// starve the boots, and new tenants would wait for the pool). True if a thread moved.
    pub(super) fn move_to_batch(&mut self, cpus: &CpuClasses) -> bool {
        self.on_batch = true;
        let Some(sandbox) = &self.sandbox else { return false };
        let _ = sandbox.set_cpu_weight(BOOT_CPU_WEIGHT);
        sandbox.set_affinity(&cpus.batch) > 0
    }

    /// Every CPU and the tenant weight back. True if a thread moved.
    pub(super) fn move_to_all(&mut self, cpus: &CpuClasses) -> bool {
        self.on_batch = false;
        let Some(sandbox) = &self.sandbox else { return false };
        let _ = sandbox.set_cpu_weight(TENANT_CPU_WEIGHT);
        sandbox.set_affinity(&cpus.all) > 0
    }
}

impl Server {
    /// Invocations still running at their check: their sandbox's CPU time since the previous check decides
    /// (at least `BUSY_CPU` in the window: busy, to the batch CPUs; with a counter of clock ticks, two such
    /// windows in a row); otherwise look again a window later.
    pub(super) fn move_busy_sandboxes(&mut self) {
        let Some(cpus) = self.cpus else { return };
        let now = Instant::now();
        while let Some(&(t, id, then, strikes)) = self.busy_checks.front() {
            if t > now {
                break;
            }
            self.busy_checks.pop_front();
            let Some(inv) = self.invocations.get(&id) else { continue };
            let Some(s) = self.sbs.get_mut(inv.sb) else { continue };
            if s.on_batch || s.killed.is_some() {
                continue;
            }
            let needed = if s.cpu_time.as_ref().is_some_and(|c| c.coarse()) { 2 } else { 1 };
            // No counter (it could not be opened): as long as it runs, the invocation counts as busy.
            let busy = match (s.cpu_time.as_ref().and_then(|c| c.total()), then) {
                (Some(total), Some(then)) => {
                    let strikes = if total.saturating_sub(then) >= cpus::BUSY_CPU { strikes + 1 } else { 0 };
                    if strikes < needed {
                        self.busy_checks.push_back((now + cpus::BUSY_WINDOW, id, Some(total), strikes));
                    }
                    strikes >= needed
                }
                (Some(total), None) => {
                    self.busy_checks.push_back((now + cpus::BUSY_WINDOW, id, Some(total), 0));
                    false
                }
                (None, _) => true,
            };
            if !busy {
                continue;
            }
            self.busy_tenants.insert(inv.tenant.clone(), now);
            // Counted only if a thread moved: without CAP_SYS_NICE none can, and the metric says so.
            if s.move_to_batch(&cpus) {
                self.metrics.sandbox_moved(true);
            }
        }
    }

    /// Tenant sandboxes that used more than half a CPU over the last tick (work left running after an
    /// invocation answered, or one that is running): busy, to the batch CPUs.
    pub(super) fn watch_cpu_time(&mut self) {
        let Some(cpus) = self.cpus else { return };
        let now = Instant::now();
        for (_, s) in self.sbs.iter_mut() {
            // Sampled in the pool too, so that a tenant's first tick counts only its own tick.
            let Some(total) = s.cpu_time.as_ref().and_then(|c| c.total()) else { continue };
            let used = total.saturating_sub(std::mem::replace(&mut s.cpu_seen, total));
            let (Some(tenant), None) = (&s.tenant, s.killed) else { continue };
            if used < HOUSEKEEPING / 2 {
                continue;
            }
            self.busy_tenants.insert(tenant.clone(), now);
            if !s.on_batch && s.move_to_batch(&cpus) {
                self.metrics.sandbox_moved(true);
            }
        }
    }

    pub(super) fn recently_busy(&self, tenant: &str) -> bool {
        self.busy_tenants.get(tenant).is_some_and(|t| t.elapsed() < cpus::BUSY_MEMORY)
    }

    /// Tenant sandboxes on the batch CPUs with nothing in flight, whose tenant has not been busy lately: every
    /// CPU back.
    pub(super) fn release_idle_sandboxes(&mut self) {
        let Some(cpus) = self.cpus else { return };
        self.busy_tenants.retain(|_, t| t.elapsed() < cpus::BUSY_MEMORY);
        for (_, s) in self.sbs.iter_mut() {
            let quiet = s.tenant.as_ref().is_some_and(|t| !self.busy_tenants.contains_key(t));
            if s.on_batch && quiet && s.in_flight.is_empty() && s.killed.is_none() && s.move_to_all(&cpus) {
                self.metrics.sandbox_moved(false);
            }
        }
    }
}
