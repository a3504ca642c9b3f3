//! Images: what a container's `imagePullPolicy` asks for, pulled with its own (long) deadline,
//! so that a slow registry fails the start with `ErrImagePull` instead of hanging the worker.

use super::conn::CallError;
use super::spec::PullPolicy;
use super::CriRuntime;
use crate::runtime::security::DefaultUser;
use crate::runtime::{ImagePull, RuntimeError};
use k8s_cri::v1 as cri;
use protocol::pod::EdgeContainer;
use tokio::time::Instant;
use tracing::{info, warn};

impl CriRuntime {
    /// containerd's `ImageStatus` of `image`: `None` if it does not have it.
    async fn image_status(&self, image: &str) -> Result<Option<cri::Image>, RuntimeError> {
        let request = cri::ImageStatusRequest {
            image: Some(cri::ImageSpec {
                image: image.to_string(),
                ..Default::default()
            }),
            verbose: false,
        };
        let response = self
            .conn
            .call(self.conn.timeout, true, || {
                let mut client = self.conn.images();
                let request = request.clone();
                async move { client.image_status(request).await }
            })
            .await
            .map_err(|e| self.internal("start container", "ImageStatus", &e))?;
        Ok(response.image)
    }

    /// The id of `image` if containerd has it.
    pub(super) async fn image_id(&self, image: &str) -> Result<Option<String>, RuntimeError> {
        Ok(self.image_status(image).await?.map(|i| i.id))
    }

    /// The user `image` runs as (CRI `ImageStatus`'s `uid` or `username`), read as kubelet
    /// does: an image that names none runs as root.
    pub(super) async fn image_user(&self, image: &str) -> Result<DefaultUser, RuntimeError> {
        let image = self.image_status(image).await?.unwrap_or_default();
        Ok(DefaultUser::of_image(
            image.uid.map(|u| u.value),
            &image.username,
        ))
    }

    /// Pulls `image`; returns the reference containerd resolved it to.
    pub(super) async fn pull(
        &self,
        image: &str,
        sandbox_config: &cri::PodSandboxConfig,
    ) -> Result<(String, ImagePull), CallError> {
        let request = cri::PullImageRequest {
            image: Some(cri::ImageSpec {
                image: image.to_string(),
                ..Default::default()
            }),
            auth: None,
            sandbox_config: Some(sandbox_config.clone()),
        };
        let started = Instant::now();
        let response = self
            .conn
            .call(self.pull_timeout, true, || {
                let mut client = self.conn.images();
                let request = request.clone();
                async move { client.pull_image(request).await }
            })
            .await?;
        let ms = started.elapsed().as_millis() as u64;
        info!(%image, image_ref = %response.image_ref, ms, "image pulled");
        Ok((response.image_ref, ImagePull::Pulled { ms }))
    }

    /// Makes sure `container`'s image is present as its pull policy says; returns the image
    /// reference to create the container from, and whether it was pulled.
    pub(super) async fn ensure_image(
        &self,
        container: &EdgeContainer,
        sandbox_config: &cri::PodSandboxConfig,
    ) -> Result<(String, ImagePull), RuntimeError> {
        let present = |id: String| (id, ImagePull::Present);
        let image = container.image.as_str();
        let policy =
            PullPolicy::of(container).map_err(|message| RuntimeError::CreateContainer {
                container: container.name.clone(),
                message,
            })?;
        let pull_error = |e: &CallError| RuntimeError::Image {
            image: image.to_string(),
            reason: "ErrImagePull".into(),
            message: format!(
                "{}; if this node cannot reach the registry, load the image with \
                 `edgecore image import <image.tar>` and set imagePullPolicy: IfNotPresent \
                 or Never",
                self.conn.describe("PullImage", e)
            ),
        };
        match policy {
            PullPolicy::Never => {
                self.image_id(image)
                    .await?
                    .map(present)
                    .ok_or_else(|| RuntimeError::Image {
                        image: image.to_string(),
                        reason: "ErrImageNeverPull".into(),
                        message: format!(
                        "the image is not on this node and imagePullPolicy is Never; load it with \
                     `edgecore image import <image.tar>` (containerd at {})",
                        self.conn.socket().display()
                    ),
                    })
            }
            PullPolicy::IfNotPresent => match self.image_id(image).await? {
                Some(id) => Ok(present(id)),
                None => self
                    .pull(image, sandbox_config)
                    .await
                    .map_err(|e| pull_error(&e)),
            },
            PullPolicy::Always => match self.pull(image, sandbox_config).await {
                Ok(reference) => Ok(reference),
                Err(e) => match self.image_id(image).await? {
                    Some(id) => {
                        warn!(%image, error = %self.conn.describe("PullImage", &e),
                              "pull failed; running the image already on this node");
                        Ok((id, ImagePull::PullFailedUsedPresent))
                    }
                    None => Err(pull_error(&e)),
                },
            },
        }
    }
}
