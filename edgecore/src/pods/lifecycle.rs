//! Running one lifecycle hook against a container instance: what kubelet's `handlerRunner`
//! (`pkg/kubelet/lifecycle/handlers.go`) does for `exec`, `httpGet` and `sleep`. When a hook
//! runs, and what its result does, is the pod machine's (`super::state::hooks`); this is only
//! the I/O, through the runtime (exec) and the prober's small HTTP client.
//!
//! As kubelet: an exec hook fails on a non-zero exit or when the runtime cannot run it; an
//! httpGet hook fails only when no HTTP response comes (its status code is not looked at); a
//! sleep hook waits and never fails. The failure messages are kubelet's, which the worker puts
//! in the `FailedPostStartHook` / `FailedPreStopHook` events.

use super::prober::{excerpt, http_hook, HttpProbe};
use crate::runtime::{Runtime, Sandbox};
use protocol::pod::LifecycleHandler;
use std::sync::Arc;
use std::time::Duration;

/// The longest a postStart hook's runtime call may take. kubelet sets none; the edge needs one
/// for the exec and HTTP calls it makes, so it is long enough never to cut a hook that works
/// (the pod's deletion does not wait for it: the worker drops a hook when the pod is stopped).
pub(crate) const POST_START_LIMIT: Duration = Duration::from_secs(3600);

/// How much longer than its limit an exec hook may take before the runtime is taken as not
/// answering (the runtime itself kills the command at the limit).
const EXEC_ANSWER_SLACK: Duration = Duration::from_secs(5);

/// One instance a hook is run for.
pub(crate) struct HookTarget<'a> {
    /// The runtime, for exec hooks.
    pub runtime: Arc<dyn Runtime>,
    /// The pod's sandbox: exec hooks run in it, its IP is an httpGet hook's default host.
    pub sandbox: &'a Sandbox,
    /// The instance.
    pub container_id: &'a str,
    /// Container name, for the messages.
    pub container: &'a str,
    /// The pod as kubelet names it in messages: `name_namespace(uid)`.
    pub pod_label: &'a str,
}

/// Which hook, for messages and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Hook {
    /// `postStart`.
    PostStart,
    /// `preStop`.
    PreStop,
}

/// Runs `handler` for `target`, giving its exec or HTTP call at most `limit`; `Err` with
/// kubelet's message when it failed.
pub(crate) async fn run(
    target: &HookTarget<'_>,
    handler: &LifecycleHandler,
    limit: Duration,
) -> Result<(), String> {
    match handler {
        LifecycleHandler::Exec { command } => {
            let failed = |error: String, output: &str| {
                format!(
                    "Exec lifecycle hook ({command:?}) for Container {:?} in Pod {:?} failed - \
                     error: {error}, message: {output:?}",
                    target.container, target.pod_label
                )
            };
            let call =
                target
                    .runtime
                    .exec_sync(target.sandbox, target.container_id, command, limit);
            match tokio::time::timeout(limit.saturating_add(EXEC_ANSWER_SLACK), call).await {
                Err(_) => Err(failed(
                    format!("the runtime did not finish the command within {limit:?}"),
                    "",
                )),
                Ok(Err(e)) => Err(failed(e.to_string(), "")),
                Ok(Ok(out)) => {
                    let mut combined = out.stdout;
                    combined.extend_from_slice(&out.stderr);
                    let output = excerpt(&combined);
                    if out.timed_out {
                        Err(failed(
                            format!("command timed out after {limit:?}"),
                            &output,
                        ))
                    } else if out.exit_code != 0 {
                        Err(failed(
                            format!("command exited with {}", out.exit_code),
                            &output,
                        ))
                    } else {
                        Ok(())
                    }
                }
            }
        }
        LifecycleHandler::HttpGet {
            host,
            port,
            path,
            scheme,
            headers,
        } => {
            let failed = |error: String| {
                format!(
                    "HTTP lifecycle hook ({path}) for Container {:?} in Pod {:?} failed - \
                     error: {error}",
                    target.container, target.pod_label
                )
            };
            let host = if host.is_empty() {
                target.sandbox.ip.as_str()
            } else {
                host.as_str()
            };
            if host.is_empty() {
                return Err(failed(
                    "the pod has no IP and the hook names no host".into(),
                ));
            }
            let tls = scheme.eq_ignore_ascii_case("HTTPS");
            let request = HttpProbe {
                tls,
                host,
                port: *port,
                path,
                headers,
            };
            http_hook(&request, limit).await.map(|_| ()).map_err(failed)
        }
        LifecycleHandler::Sleep { seconds } => {
            tokio::time::sleep(Duration::from_secs(*seconds).min(limit)).await;
            Ok(())
        }
    }
}
