//! Containers: created (or found again by pod uid, name and attempt, so that a retried start
//! adopts what an earlier one created), started, stopped with a grace and removed.

use super::conn::CallError;
use super::spec::{LABEL_CONTAINER_NAME, LABEL_POD_UID};
use super::{conn, is_safe_component, spec, whole_seconds, CriRuntime};
use crate::runtime::security::{verify_run_as_non_root, DefaultUser};
use crate::runtime::{ContainerConfig, ContainerInfo, ContainerRunState, RuntimeError, Sandbox};
use k8s_cri::v1 as cri;
use protocol::pod::{EdgeContainer, EdgePod};
use std::collections::HashMap;
use std::time::Duration;
use tokio::time::Instant;
use tonic::Code;
use tracing::{info, warn};

impl CriRuntime {
    /// [`Runtime::start_container`]: adopts the instance an earlier start of the same attempt
    /// created, or pulls the image as the policy says, creates and starts it.
    pub(super) async fn start_instance(
        &self,
        sandbox: &Sandbox,
        pod: &EdgePod,
        container: &EdgeContainer,
        config: &ContainerConfig,
    ) -> Result<ContainerInfo, RuntimeError> {
        const OP: &str = "start container";
        let create_err = |message: String| RuntimeError::CreateContainer {
            container: container.name.clone(),
            message,
        };
        if container.image.is_empty() {
            return Err(create_err("it has no image".into()));
        }
        if !is_safe_component(&container.name) {
            return Err(create_err(
                "the container name is not usable as a directory name".into(),
            ));
        }
        let status = self.sandbox_status(OP, &sandbox.id).await?;
        let sandbox_attempt = match &status {
            Some(s) if s.state == cri::PodSandboxState::SandboxReady as i32 => {
                s.metadata.as_ref().map(|m| m.attempt).unwrap_or(0)
            }
            other => {
                return Err(RuntimeError::SandboxNotReady {
                    sandbox: sandbox.id.clone(),
                    pod: pod.key(),
                    message: match other {
                        Some(_) => "containerd reports it not ready (its sandbox process died)",
                        None => "containerd no longer knows it",
                    }
                    .into(),
                })
            }
        };
        let attempt = config.attempt.to_string();

        // This instance may exist already: a start that timed out, or an edgecore restarted
        // mid-start, created it.
        let existing = self
            .containers(
                OP,
                Some(&sandbox.id),
                &[
                    (LABEL_POD_UID, &pod.uid),
                    (LABEL_CONTAINER_NAME, &container.name),
                    (spec::LABEL_ATTEMPT, &attempt),
                ],
            )
            .await?;
        let mut created: Option<(String, HashMap<String, String>, String)> = None;
        let mut image_pull = None;
        for found in existing {
            match self.observe(OP, &found.id).await? {
                ContainerRunState::Created if created.is_none() => {
                    info!(pod = %pod.key(), container = %container.name, attempt = config.attempt,
                          "container instance created earlier; starting it");
                    created = Some((found.id, found.labels, found.image_ref));
                }
                state @ ContainerRunState::Running { .. } => {
                    info!(pod = %pod.key(), container = %container.name, attempt = config.attempt,
                          "container instance already running; adopting it");
                    return Ok(Self::info(
                        &found.id,
                        found.metadata.as_ref(),
                        &found.labels,
                        &found.image_ref,
                        state,
                    ));
                }
                state @ ContainerRunState::Exited { started_at_ms, .. } if started_at_ms > 0 => {
                    // It ran and ended before its start was confirmed: that is this start's
                    // result (running it again would run the attempt twice).
                    info!(pod = %pod.key(), container = %container.name, attempt = config.attempt,
                          "container instance already ran; reporting its exit");
                    return Ok(Self::info(
                        &found.id,
                        found.metadata.as_ref(),
                        &found.labels,
                        &found.image_ref,
                        state,
                    ));
                }
                previous => {
                    warn!(pod = %pod.key(), container = %container.name, attempt = config.attempt,
                          id = %found.id, ?previous, "replacing a stale instance with the same attempt");
                    self.remove(OP, &found.id).await?;
                }
            }
        }

        let started = Instant::now();
        let (id, labels, image_ref) = match created {
            Some(found) => found,
            None => {
                let hostname = self.pod_hostname(pod).map_err(&create_err)?;
                let sandbox_config = spec::sandbox_config(
                    pod,
                    hostname,
                    sandbox_attempt,
                    &self.instance,
                    &self.log_dir(&pod.uid),
                    // Only RunPodSandbox reads it (the resolv.conf is the sandbox's).
                    None,
                    &self.seccomp_root(),
                );
                let (image, pull) = self.ensure_image(container, &sandbox_config).await?;
                image_pull = Some(pull);
                // The image's user matters only to a container that sets a securityContext
                // (kubelet asks ImageStatus for it on every create).
                let image_user = match container.security {
                    Some(_) => self.image_user(&image).await?,
                    None => DefaultUser::default(),
                };
                verify_run_as_non_root(pod, container, &image_user).map_err(|message| {
                    RuntimeError::CreateContainerConfig {
                        container: container.name.clone(),
                        message,
                    }
                })?;
                let log_dir = self.log_dir(&pod.uid).join(&container.name);
                tokio::fs::create_dir_all(&log_dir)
                    .await
                    .map_err(|e| RuntimeError::Internal {
                        op: OP.into(),
                        message: format!("cannot create log directory {}: {e}", log_dir.display()),
                    })?;
                let container_config = spec::container_config(
                    &self.instance,
                    pod,
                    container,
                    config,
                    self.swap_limit,
                    spec::Resolved {
                        image: &image,
                        etc_hosts: &self.hosts_path(&pod.uid),
                        security: spec::container_security(
                            container.security.as_deref(),
                            &image_user,
                            &self.seccomp_root(),
                        ),
                    },
                );
                let labels = container_config.labels.clone();
                let request = cri::CreateContainerRequest {
                    pod_sandbox_id: sandbox.id.clone(),
                    config: Some(container_config),
                    sandbox_config: Some(sandbox_config),
                };
                let response = self
                    .conn
                    .call(self.conn.timeout, false, || {
                        let mut client = self.conn.runtime();
                        let request = request.clone();
                        async move { client.create_container(request).await }
                    })
                    .await;
                match response {
                    Ok(response) => (response.container_id, labels, image.clone()),
                    Err(CallError::Status(status))
                        if !matches!(status.code(), Code::Unavailable | Code::DeadlineExceeded) =>
                    {
                        return Err(create_err(format!(
                            "containerd could not create it: {}",
                            conn::status_text(&status)
                        )))
                    }
                    Err(e) => return Err(self.internal(OP, "CreateContainer", &e)),
                }
            }
        };
        self.start_created(container, &id).await?;
        let state = self.observe(OP, &id).await?;
        info!(pod = %pod.key(), container = %container.name, attempt = config.attempt, %id,
              ms = started.elapsed().as_millis() as u64, "container started");
        let metadata = cri::ContainerMetadata {
            name: container.name.clone(),
            attempt: config.attempt,
        };
        Ok(ContainerInfo {
            image_pull,
            ..Self::info(&id, Some(&metadata), &labels, &image_ref, state)
        })
    }

    /// Starts a created container; on failure it is removed (so that a retry creates it
    /// anew) and the failure returned.
    pub(super) async fn start_created(
        &self,
        container: &EdgeContainer,
        id: &str,
    ) -> Result<(), RuntimeError> {
        let request = cri::StartContainerRequest {
            container_id: id.to_string(),
        };
        match self
            .conn
            .call(self.conn.timeout, false, || {
                let mut client = self.conn.runtime();
                let request = request.clone();
                async move { client.start_container(request).await }
            })
            .await
        {
            Ok(_) => Ok(()),
            // It may have started: a retry finds the instance and adopts whatever it became.
            Err(e @ CallError::Timeout(_)) => {
                Err(self.internal("start container", "StartContainer", &e))
            }
            Err(CallError::Status(status)) if status.code() == Code::Unavailable => Err(self
                .internal(
                    "start container",
                    "StartContainer",
                    &CallError::Status(status),
                )),
            Err(CallError::Status(status)) => {
                // A start retried after a timed-out one may find it starting or started already.
                // (A failed start leaves it exited without a start time: that is not one.)
                match self.observe("start container", id).await {
                    Ok(ContainerRunState::Running { .. }) => return Ok(()),
                    Ok(ContainerRunState::Exited { started_at_ms, .. }) if started_at_ms > 0 => {
                        return Ok(())
                    }
                    _ => {}
                }
                if let Err(e) = self.remove("start container", id).await {
                    warn!(container = %container.name, %id, error = %e,
                          "cannot remove a container that failed to start");
                }
                Err(RuntimeError::CreateContainer {
                    container: container.name.clone(),
                    message: format!(
                        "containerd could not start it: {}",
                        conn::status_text(&status)
                    ),
                })
            }
        }
    }

    /// Stops a container, giving it `grace` between SIGTERM and SIGKILL; a container that does
    /// not exist is stopped.
    pub(super) async fn stop(
        &self,
        op: &str,
        id: &str,
        grace: Duration,
    ) -> Result<(), RuntimeError> {
        let request = cri::StopContainerRequest {
            container_id: id.to_string(),
            timeout: whole_seconds(grace),
        };
        let deadline = grace.saturating_add(self.conn.timeout);
        let result = self
            .conn
            .call(deadline, true, || {
                let mut client = self.conn.runtime();
                let request = request.clone();
                async move { client.stop_container(request).await }
            })
            .await;
        self.done_if_absent(result, op, "StopContainer")
    }

    /// Removes a container (stopping it at once if it runs); a missing one is removed.
    pub(super) async fn remove(&self, op: &str, id: &str) -> Result<(), RuntimeError> {
        let request = cri::RemoveContainerRequest {
            container_id: id.to_string(),
        };
        let result = self
            .conn
            .call(self.conn.timeout, true, || {
                let mut client = self.conn.runtime();
                let request = request.clone();
                async move { client.remove_container(request).await }
            })
            .await;
        self.done_if_absent(result, op, "RemoveContainer")
    }
}
