//! Long-running subsystems that are noticed when they end.
//!
//! A daemon's subsystems (the link, the outbox publisher, the heartbeat; the hub, the ingest,
//! the scheduler) are loops that should run for as long as the process does. Spawned and
//! forgotten, one that panics or returns is silently gone while the health endpoint still says
//! "ok". Run under a [`Supervisor`], an ended subsystem is logged, counted in
//! `skerry_subsystem_restarts_total{subsystem}` and started again after a back-off (1 s doubling
//! to 30 s, reset once a run has lasted [`Policy::stable_after`]). After
//! [`Policy::failed_after`] quick failures in a row it is reported as failed in
//! [`Supervisor::check`] (what `/readyz` and `/healthz` answer, in kube-apiserver's
//! `[+]name ok` / `[-]name failed: reason` format), and after [`Policy::exit_after`] the process
//! exits non-zero so that systemd restarts all of it: a subsystem that cannot recover in
//! place may recover in a fresh process.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// When a subsystem counts as failed, and when the process gives up.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// First delay before a restart.
    pub backoff_initial: Duration,
    /// Longest delay before a restart.
    pub backoff_max: Duration,
    /// A run this long resets the failure count and the back-off.
    pub stable_after: Duration,
    /// Quick failures in a row after which the subsystem is reported failed.
    pub failed_after: u32,
    /// Quick failures in a row after which the process exits with status 1 (`None`: never).
    pub exit_after: Option<u32>,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            backoff_initial: Duration::from_secs(1),
            backoff_max: Duration::from_secs(30),
            stable_after: Duration::from_secs(60),
            failed_after: 3,
            exit_after: Some(10),
        }
    }
}

#[derive(Debug, Default, Clone)]
struct State {
    restarts: u64,
    quick_failures: u32,
    last_end: Option<String>,
}

/// One subsystem's verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// Subsystem name.
    pub name: String,
    /// Why it is failing, if it is.
    pub failure: Option<String>,
}

/// The subsystems of one process.
#[derive(Debug, Clone)]
pub struct Supervisor {
    policy: Policy,
    states: Arc<Mutex<BTreeMap<&'static str, State>>>,
}

impl Supervisor {
    /// A supervisor applying `policy`.
    pub fn new(policy: Policy) -> Self {
        Self {
            policy,
            states: Arc::default(),
        }
    }

    fn update<R>(&self, name: &'static str, f: impl FnOnce(&mut State) -> R) -> R {
        let mut states = self.states.lock().unwrap_or_else(|e| e.into_inner());
        f(states.entry(name).or_default())
    }

    /// Runs `make()` as subsystem `name`, and again whenever it ends or panics. `make` is
    /// called for each run, so it clones what the run needs.
    pub fn spawn<F, Fut>(&self, name: &'static str, make: F)
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.update(name, |_| ());
        let me = self.clone();
        tokio::spawn(async move {
            let mut delay = me.policy.backoff_initial;
            loop {
                let started = Instant::now();
                let ended = match tokio::spawn(make()).await {
                    Ok(()) => "returned".to_string(),
                    Err(e) if e.is_panic() => {
                        let payload = e.into_panic();
                        let text = payload
                            .downcast_ref::<&str>()
                            .map(|s| s.to_string())
                            .or_else(|| payload.downcast_ref::<String>().cloned())
                            .unwrap_or_else(|| "a non-text panic".into());
                        format!("panicked: {text}")
                    }
                    Err(_) => return, // cancelled: the runtime is shutting down
                };
                if started.elapsed() >= me.policy.stable_after {
                    delay = me.policy.backoff_initial;
                    me.update(name, |s| s.quick_failures = 0);
                }
                let quick = me.update(name, |s| {
                    s.restarts += 1;
                    s.quick_failures += 1;
                    s.last_end = Some(ended.clone());
                    s.quick_failures
                });
                metrics::counter!("skerry_subsystem_restarts_total", "subsystem" => name)
                    .increment(1);
                tracing::error!(subsystem = name, %ended, restart_in_ms = delay.as_millis() as u64,
                    "subsystem ended; restarting it");
                if me.policy.exit_after.is_some_and(|n| quick >= n) {
                    tracing::error!(
                        subsystem = name,
                        failures = quick,
                        "subsystem keeps failing; exiting so that the service manager restarts the process"
                    );
                    std::process::exit(1);
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(me.policy.backoff_max);
            }
        });
    }

    /// Every subsystem's verdict, by name.
    pub fn check(&self) -> Vec<Check> {
        let states = self.states.lock().unwrap_or_else(|e| e.into_inner());
        states
            .iter()
            .map(|(name, s)| Check {
                name: name.to_string(),
                failure: (s.quick_failures >= self.policy.failed_after).then(|| {
                    format!(
                        "{} after {} restarts in a row ({} in all)",
                        s.last_end.as_deref().unwrap_or("ended"),
                        s.quick_failures,
                        s.restarts
                    )
                }),
            })
            .collect()
    }

    /// The health answer in kube-apiserver's format: `ok` when everything passes (with
    /// `verbose`, one `[+]name ok` line each), otherwise the lines with the failures
    /// (`[-]name failed: ...`) and `healthz check failed`; and whether it passed.
    pub fn render(&self, verbose: bool, extra: &[Check]) -> (bool, String) {
        let mut checks = self.check();
        checks.extend_from_slice(extra);
        let ok = checks.iter().all(|c| c.failure.is_none());
        if ok && !verbose {
            return (true, "ok".into());
        }
        let mut out = String::new();
        for c in &checks {
            match &c.failure {
                None => out.push_str(&format!("[+]{} ok\n", c.name)),
                Some(why) => out.push_str(&format!("[-]{} failed: {why}\n", c.name)),
            }
        }
        out.push_str(if ok {
            "healthz check passed\n"
        } else {
            "healthz check failed\n"
        });
        (ok, out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn policy() -> Policy {
        Policy {
            exit_after: None,
            ..Policy::default()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_ended_or_panicking_subsystem_is_restarted_and_reported_failed_when_it_keeps_at_it()
    {
        let sup = Supervisor::new(policy());
        let runs = Arc::new(AtomicU32::new(0));
        let r = runs.clone();
        sup.spawn("flaky", move || {
            let r = r.clone();
            async move {
                if r.fetch_add(1, Ordering::SeqCst).is_multiple_of(2) {
                    panic!("boom");
                }
            }
        });
        sup.spawn("steady", std::future::pending);
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        let (ok, text) = sup.render(true, &[]);
        assert!(ok, "one failure is not yet a failed subsystem: {text}");
        // Back-off: 1 s, 2 s, ... between runs.
        tokio::time::sleep(Duration::from_millis(1_100)).await;
        assert_eq!(runs.load(Ordering::SeqCst), 2);
        tokio::time::sleep(Duration::from_millis(2_100)).await;
        assert_eq!(runs.load(Ordering::SeqCst), 3);
        let (ok, text) = sup.render(false, &[]);
        assert!(!ok);
        assert!(
            text.contains("[-]flaky failed: panicked: boom after 3 restarts in a row"),
            "{text}"
        );
        assert!(text.contains("[+]steady ok"), "{text}");
        assert!(text.ends_with("healthz check failed\n"), "{text}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_long_run_resets_the_failure_count() {
        let sup = Supervisor::new(Policy {
            failed_after: 2,
            ..policy()
        });
        let runs = Arc::new(AtomicU32::new(0));
        let r = runs.clone();
        sup.spawn("slow", move || {
            let r = r.clone();
            async move {
                r.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_secs(120)).await;
            }
        });
        tokio::time::sleep(Duration::from_secs(600)).await;
        assert!(runs.load(Ordering::SeqCst) >= 4);
        assert!(sup.check()[0].failure.is_none(), "{:?}", sup.check());
        assert_eq!(sup.render(false, &[]), (true, "ok".to_string()));
    }
}
