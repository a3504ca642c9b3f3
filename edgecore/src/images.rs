//! Loading container images without a registry: `edgecore image import FILE.tar`.
//!
//! Edge sites are often air-gapped; images arrive on a USB stick as OCI image-layout tars
//! (`deploy/images/build.sh` builds them, `docker save` and `ctr images export` write them).
//! The import talks to containerd's native API, as `ctr images import` does, so the edge needs
//! nothing but edgecore and containerd:
//!
//! 1. the tar is read twice: once to find the index and the manifests and configs it names
//!    (small JSON blobs, kept in memory), once to stream each referenced blob into containerd's
//!    content store, checked against its digest, with the garbage-collection labels that tie a
//!    manifest to its config and layers;
//! 2. each layer is unpacked into the snapshotter CRI uses (`overlayfs`): prepare a snapshot on
//!    the parent chain, apply the layer with the diff service, commit it under its chain id;
//! 3. the image record is created (or moved) under its name; CRI sees the event and the image
//!    is usable by pods at once, with `imagePullPolicy: Never` or `IfNotPresent`.
//!
//! Everything runs under a containerd lease, so a half-done import is garbage-collected instead
//! of leaking, and a failed import leaves any older image of the same name untouched.

use containerd_client::services::v1::snapshots::{
    snapshots_client::SnapshotsClient, CommitSnapshotRequest, PrepareSnapshotRequest,
    RemoveSnapshotRequest, StatSnapshotRequest,
};
use containerd_client::services::v1::{
    content_client::ContentClient, diff_client::DiffClient, images_client::ImagesClient,
    leases_client::LeasesClient, ApplyRequest, CreateImageRequest, GetImageRequest, Image, Info,
    InfoRequest, UpdateImageRequest, UpdateRequest, WriteAction, WriteContentRequest,
};
use containerd_client::types::Descriptor;
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tonic::transport::Channel;
use tonic::{Code, Request};

/// Largest blob kept in memory while the archive's index is read (manifests, configs, indexes).
const MAX_METADATA_BLOB: u64 = 4 << 20;
/// Size of the chunks streamed into the content store.
const WRITE_CHUNK: usize = 1 << 20;

const MEDIA_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const MEDIA_DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

/// Where and how images are imported.
#[derive(Debug, Clone)]
pub struct ImportOptions {
    /// containerd's socket.
    pub socket: PathBuf,
    /// containerd namespace; CRI uses `k8s.io`.
    pub namespace: String,
    /// Snapshotter to unpack into; CRI's default is `overlayfs`.
    pub snapshotter: String,
    /// Architecture whose manifest is unpacked from multi-platform archives.
    pub architecture: String,
}

impl Default for ImportOptions {
    fn default() -> Self {
        Self {
            socket: PathBuf::from("/run/containerd/containerd.sock"),
            namespace: "k8s.io".into(),
            snapshotter: "overlayfs".into(),
            architecture: go_arch().into(),
        }
    }
}

/// The Go/OCI name of this machine's architecture.
pub fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "arm" => "arm",
        "riscv64" => "riscv64",
        "powerpc64" => "ppc64le",
        "s390x" => "s390x",
        other => other,
    }
}

/// One image an import created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Imported {
    /// Image name, e.g. `skerry.local/busybox:1.35`.
    pub name: String,
    /// Digest of the manifest (or index) the name points at.
    pub digest: String,
}

/// Why an import failed. Each message names the file and what to do.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// The file cannot be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// File.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// The file is not a usable OCI image archive.
    #[error("{path} is not a usable OCI image archive: {reason}; build one with deploy/images/build.sh, `docker save` or `ctr images export`")]
    Archive {
        /// File.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// containerd refused or failed.
    #[error("containerd at {socket} failed during {op}: {message}")]
    Containerd {
        /// Socket.
        socket: String,
        /// What was being done.
        op: String,
        /// Its answer.
        message: String,
    },
}

/// What the first pass over the archive learnt.
#[derive(Default)]
struct Archive {
    /// `index.json`.
    index: Option<Value>,
    /// Small blobs by digest (`sha256:...`).
    small: HashMap<String, Vec<u8>>,
    /// Every blob in the archive: digest → size.
    blobs: HashMap<String, u64>,
}

/// An image of the archive, resolved to the manifest for this architecture.
struct Resolved {
    name: String,
    /// What the name points at (the index entry's descriptor).
    target: Desc,
    config: Desc,
    layers: Vec<Desc>,
    /// Blobs to write with their gc child labels, parents after children.
    writes: Vec<(Desc, BTreeMap<String, String>)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Desc {
    media_type: String,
    digest: String,
    size: i64,
}

impl Desc {
    fn from_json(v: &Value) -> Option<Self> {
        Some(Self {
            media_type: v.get("mediaType")?.as_str()?.to_string(),
            digest: v.get("digest")?.as_str()?.to_string(),
            size: v.get("size")?.as_i64()?,
        })
    }

    fn to_proto(&self) -> Descriptor {
        Descriptor {
            media_type: self.media_type.clone(),
            digest: self.digest.clone(),
            size: self.size,
            annotations: HashMap::new(),
        }
    }
}

/// Imports every image of the OCI archive at `path` into containerd.
pub async fn import(path: &Path, opts: &ImportOptions) -> Result<Vec<Imported>, ImportError> {
    let shown = path.display().to_string();
    let archive = {
        let path = path.to_path_buf();
        tokio::task::spawn_blocking(move || scan(&path))
            .await
            .map_err(|e| ImportError::Archive {
                path: shown.clone(),
                reason: format!("reader failed: {e}"),
            })??
    };
    let images = resolve(&archive, &opts.architecture).map_err(|reason| ImportError::Archive {
        path: shown.clone(),
        reason,
    })?;
    let c = Containerd::connect(opts).await?;
    let lease = c.create_lease().await?;
    let result = async {
        let mut written = std::collections::HashSet::new();
        for image in &images {
            for (desc, labels) in &image.writes {
                if written.insert(desc.digest.clone()) {
                    c.put_blob(path, &archive, desc, labels, &lease).await?;
                }
            }
        }
        let mut out = Vec::new();
        for image in &images {
            c.unpack(image, &archive, &lease).await?;
            c.set_image(image, &lease).await?;
            out.push(Imported {
                name: image.name.clone(),
                digest: image.target.digest.clone(),
            });
        }
        Ok(out)
    }
    .await;
    c.delete_lease(&lease).await;
    result
}

/// First pass: index.json, every blob's size, the small blobs' bytes.
fn scan(path: &Path) -> Result<Archive, ImportError> {
    let shown = path.display().to_string();
    let io = |source| ImportError::Io {
        path: shown.clone(),
        source,
    };
    let bad = |reason: String| ImportError::Archive {
        path: shown.clone(),
        reason,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let mut tar = tar::Archive::new(std::io::BufReader::new(file));
    let mut archive = Archive::default();
    let entries = tar
        .entries()
        .map_err(|e| bad(format!("not a tar file ({e})")))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| bad(format!("damaged tar entry ({e})")))?;
        let name = entry
            .path()
            .map_err(|e| bad(format!("bad entry name ({e})")))?
            .to_string_lossy()
            .trim_start_matches("./")
            .to_string();
        let size = entry.size();
        if name == "index.json" {
            let mut buf = Vec::new();
            entry
                .by_ref()
                .take(MAX_METADATA_BLOB)
                .read_to_end(&mut buf)
                .map_err(|e| bad(format!("cannot read index.json ({e})")))?;
            archive.index = Some(
                serde_json::from_slice(&buf)
                    .map_err(|e| bad(format!("index.json is not valid JSON ({e})")))?,
            );
        } else if let Some(hex) = name.strip_prefix("blobs/sha256/") {
            if hex.is_empty() {
                continue; // the directory entry
            }
            let digest = format!("sha256:{hex}");
            archive.blobs.insert(digest.clone(), size);
            if size <= MAX_METADATA_BLOB {
                let mut buf = Vec::with_capacity(size as usize);
                entry
                    .read_to_end(&mut buf)
                    .map_err(|e| bad(format!("cannot read blob {digest} ({e})")))?;
                archive.small.insert(digest, buf);
            }
        }
    }
    if archive.index.is_none() {
        return Err(bad(
            "it has no index.json (a docker-only `docker save` archive from an old docker? re-export it as OCI)".into(),
        ));
    }
    Ok(archive)
}

/// Walks index.json to the images this archive names and what must be written for each.
fn resolve(archive: &Archive, arch: &str) -> Result<Vec<Resolved>, String> {
    let index = archive.index.as_ref().expect("scan checked");
    let entries = index
        .get("manifests")
        .and_then(Value::as_array)
        .ok_or("index.json has no manifests list")?;
    let mut out = Vec::new();
    for entry in entries {
        let target =
            Desc::from_json(entry).ok_or("an index.json entry lacks mediaType, digest or size")?;
        let annotations = entry.get("annotations");
        let name = annotations
            .and_then(|a| a.get("io.containerd.image.name"))
            .and_then(Value::as_str)
            .map(str::to_string)
            .or_else(|| {
                annotations
                    .and_then(|a| a.get("org.opencontainers.image.ref.name"))
                    .and_then(Value::as_str)
                    .filter(|r| r.contains('/') || r.contains(':'))
                    .map(str::to_string)
            })
            .ok_or_else(|| {
                format!(
                    "index entry {} has no image name (annotation io.containerd.image.name or a full org.opencontainers.image.ref.name)",
                    target.digest
                )
            })?;
        let mut writes = Vec::new();
        let manifest =
            if target.media_type == MEDIA_OCI_INDEX || target.media_type == MEDIA_DOCKER_LIST {
                let nested: Value = json_blob(archive, &target)?;
                let list = nested
                    .get("manifests")
                    .and_then(Value::as_array)
                    .ok_or_else(|| format!("index {} has no manifests", target.digest))?;
                let chosen = list
                    .iter()
                    .find(|m| {
                        m.pointer("/platform/architecture").and_then(Value::as_str) == Some(arch)
                            && m.pointer("/platform/os").and_then(Value::as_str) != Some("windows")
                    })
                    .and_then(Desc::from_json)
                    .ok_or_else(|| format!("image {name} has no manifest for linux/{arch}"))?;
                // The index keeps only the chosen manifest alive; others are not in the archive
                // necessarily.
                writes.push((
                    target.clone(),
                    BTreeMap::from([(
                        "containerd.io/gc.ref.content.m.0".to_string(),
                        chosen.digest.clone(),
                    )]),
                ));
                chosen
            } else {
                target.clone()
            };
        let m: Value = json_blob(archive, &manifest)?;
        let config = m
            .get("config")
            .and_then(Desc::from_json)
            .ok_or_else(|| format!("manifest {} has no config descriptor", manifest.digest))?;
        let layers = m
            .get("layers")
            .and_then(Value::as_array)
            .ok_or_else(|| format!("manifest {} has no layers", manifest.digest))?
            .iter()
            .map(|l| {
                Desc::from_json(l)
                    .ok_or_else(|| format!("manifest {} has a malformed layer", manifest.digest))
            })
            .collect::<Result<Vec<_>, _>>()?;
        for blob in std::iter::once(&config).chain(&layers) {
            match archive.blobs.get(&blob.digest) {
                Some(&size) if size as i64 == blob.size => {}
                Some(&size) => {
                    return Err(format!(
                        "blob {} is {size} bytes, its descriptor says {}",
                        blob.digest, blob.size
                    ))
                }
                None => return Err(format!("blob {} of image {name} is missing", blob.digest)),
            }
        }
        let mut manifest_labels = BTreeMap::from([(
            "containerd.io/gc.ref.content.config".to_string(),
            config.digest.clone(),
        )]);
        for (i, l) in layers.iter().enumerate() {
            manifest_labels.insert(
                format!("containerd.io/gc.ref.content.l.{i}"),
                l.digest.clone(),
            );
        }
        let mut ordered = vec![(config.clone(), BTreeMap::new())];
        ordered.extend(layers.iter().map(|l| (l.clone(), BTreeMap::new())));
        ordered.push((manifest.clone(), manifest_labels));
        ordered.extend(writes);
        out.push(Resolved {
            name,
            target,
            config,
            layers,
            writes: ordered,
        });
    }
    if out.is_empty() {
        return Err("index.json lists no images".into());
    }
    Ok(out)
}

fn json_blob(archive: &Archive, desc: &Desc) -> Result<Value, String> {
    let bytes = archive.small.get(&desc.digest).ok_or_else(|| {
        format!(
            "blob {} is missing or too large for a manifest",
            desc.digest
        )
    })?;
    if sha256(bytes) != desc.digest {
        return Err(format!(
            "blob {} does not match its digest (the file is damaged)",
            desc.digest
        ));
    }
    serde_json::from_slice(bytes)
        .map_err(|e| format!("blob {} is not valid JSON: {e}", desc.digest))
}

fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// The chain ids of a layer stack, as the OCI image spec defines them.
fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(diff_ids.len());
    for d in diff_ids {
        let next = match out.last() {
            None => d.clone(),
            Some(prev) => sha256(format!("{prev} {d}").as_bytes()),
        };
        out.push(next);
    }
    out
}

/// containerd's native API, scoped to one namespace.
struct Containerd {
    channel: Channel,
    opts: ImportOptions,
}

impl Containerd {
    async fn connect(opts: &ImportOptions) -> Result<Self, ImportError> {
        let channel = tokio::time::timeout(
            Duration::from_secs(10),
            containerd_client::connect(&opts.socket),
        )
        .await
        .map_err(|_| "timed out".to_string())
        .and_then(|r| r.map_err(|e| e.to_string()))
        .map_err(|message| ImportError::Containerd {
            socket: opts.socket.display().to_string(),
            op: "connect".into(),
            message: format!("{message}; is containerd running, and is --containerd-socket right?"),
        })?;
        Ok(Self {
            channel,
            opts: opts.clone(),
        })
    }

    fn err(&self, op: &str, status: tonic::Status) -> ImportError {
        ImportError::Containerd {
            socket: self.opts.socket.display().to_string(),
            op: op.to_string(),
            message: status.message().to_string(),
        }
    }

    fn request<T>(&self, msg: T, lease: Option<&str>) -> Request<T> {
        let mut req = Request::new(msg);
        let md = req.metadata_mut();
        if let Ok(ns) = self.opts.namespace.parse() {
            md.insert("containerd-namespace", ns);
        }
        if let Some(lease) = lease.and_then(|l| l.parse().ok()) {
            md.insert("containerd-lease", lease);
        }
        req.set_timeout(Duration::from_secs(120));
        req
    }

    async fn create_lease(&self) -> Result<String, ImportError> {
        let expire = std::time::SystemTime::now() + Duration::from_secs(3600);
        let expire = humantime_rfc3339(expire);
        let id = format!("skerry-import-{}", rand::random::<u64>());
        let mut leases = LeasesClient::new(self.channel.clone());
        leases
            .create(self.request(
                containerd_client::services::v1::CreateRequest {
                    id: id.clone(),
                    labels: HashMap::from([("containerd.io/gc.expire".to_string(), expire)]),
                },
                None,
            ))
            .await
            .map_err(|e| self.err("create lease", e))?;
        Ok(id)
    }

    async fn delete_lease(&self, id: &str) {
        let mut leases = LeasesClient::new(self.channel.clone());
        let _ = leases
            .delete(self.request(
                containerd_client::services::v1::DeleteRequest {
                    id: id.to_string(),
                    sync: false,
                },
                None,
            ))
            .await;
    }

    /// Writes one blob (streamed from the archive) with its labels; if containerd has it
    /// already, only the labels are set.
    async fn put_blob(
        &self,
        path: &Path,
        archive: &Archive,
        desc: &Desc,
        labels: &BTreeMap<String, String>,
        lease: &str,
    ) -> Result<(), ImportError> {
        let mut content = ContentClient::new(self.channel.clone());
        let labels: HashMap<String, String> = labels.clone().into_iter().collect();
        let exists = content
            .info(self.request(
                InfoRequest {
                    digest: desc.digest.clone(),
                },
                Some(lease),
            ))
            .await;
        match exists {
            Ok(_) => {
                if labels.is_empty() {
                    return Ok(());
                }
                let paths = labels.keys().map(|k| format!("labels.{k}")).collect();
                content
                    .update(self.request(
                        UpdateRequest {
                            info: Some(Info {
                                digest: desc.digest.clone(),
                                labels,
                                ..Default::default()
                            }),
                            update_mask: Some(prost_types::FieldMask { paths }),
                        },
                        Some(lease),
                    ))
                    .await
                    .map_err(|e| self.err("label content", e))?;
                return Ok(());
            }
            Err(s) if s.code() == Code::NotFound => {}
            Err(s) => return Err(self.err("stat content", s)),
        }
        // The blob is streamed from the archive in chunks, hashed on the way: a layer of
        // hundreds of megabytes never sits in memory on a small edge device.
        let (tx, rx) = tokio::sync::mpsc::channel::<WriteContentRequest>(4);
        let producer = {
            let small = archive.small.get(&desc.digest).cloned();
            let path = path.to_path_buf();
            let desc = desc.clone();
            tokio::task::spawn_blocking(move || match small {
                Some(bytes) => send_blob(&path, &desc, labels, &mut bytes.as_slice(), &tx),
                None => with_blob_reader(&path, &desc.digest, |reader| {
                    send_blob(&path, &desc, labels, reader, &tx)
                }),
            })
        };
        let stream =
            futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) });
        let written = content
            .write(self.request(stream, Some(lease)))
            .await
            .map_err(|e| self.err(&format!("write blob {}", desc.digest), e));
        // A damaged archive is the error to report (its stream ended without a commit).
        producer.await.map_err(|e| ImportError::Archive {
            path: path.display().to_string(),
            reason: format!("reader failed: {e}"),
        })??;
        let resp = written?;
        let mut resp = resp.into_inner();
        loop {
            match resp.message().await {
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(s) if s.code() == Code::AlreadyExists => break,
                Err(s) => return Err(self.err(&format!("write blob {}", desc.digest), s)),
            }
        }
        Ok(())
    }

    /// Unpacks the image's layers into the snapshotter, unless already there.
    async fn unpack(
        &self,
        image: &Resolved,
        archive: &Archive,
        lease: &str,
    ) -> Result<(), ImportError> {
        let config: Value =
            json_blob(archive, &image.config).map_err(|reason| ImportError::Archive {
                path: image.name.clone(),
                reason,
            })?;
        let diff_ids: Vec<String> = config
            .pointer("/rootfs/diff_ids")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default();
        if diff_ids.len() != image.layers.len() {
            return Err(ImportError::Archive {
                path: image.name.clone(),
                reason: format!(
                    "its config lists {} layer diff ids for {} layers",
                    diff_ids.len(),
                    image.layers.len()
                ),
            });
        }
        let chains = chain_ids(&diff_ids);
        let mut snapshots = SnapshotsClient::new(self.channel.clone());
        let mut diff = DiffClient::new(self.channel.clone());
        let sn = self.opts.snapshotter.clone();
        for (i, layer) in image.layers.iter().enumerate() {
            let chain = &chains[i];
            let have = snapshots
                .stat(self.request(
                    StatSnapshotRequest {
                        snapshotter: sn.clone(),
                        key: chain.clone(),
                    },
                    Some(lease),
                ))
                .await;
            match have {
                Ok(_) => continue,
                Err(s) if s.code() == Code::NotFound => {}
                Err(s) => return Err(self.err("stat snapshot", s)),
            }
            let key = format!("extract-{}-{chain}", rand::random::<u32>());
            let parent = if i == 0 {
                String::new()
            } else {
                chains[i - 1].clone()
            };
            let mounts = snapshots
                .prepare(self.request(
                    PrepareSnapshotRequest {
                        snapshotter: sn.clone(),
                        key: key.clone(),
                        parent,
                        labels: HashMap::new(),
                    },
                    Some(lease),
                ))
                .await
                .map_err(|e| self.err("prepare snapshot", e))?
                .into_inner()
                .mounts;
            let applied = diff
                .apply(self.request(
                    ApplyRequest {
                        diff: Some(layer.to_proto()),
                        mounts,
                        payloads: HashMap::new(),
                        sync_fs: true,
                    },
                    Some(lease),
                ))
                .await;
            let applied = match applied {
                Ok(r) => r.into_inner().applied,
                Err(e) => {
                    let _ = snapshots
                        .remove(self.request(
                            RemoveSnapshotRequest {
                                snapshotter: sn.clone(),
                                key,
                            },
                            Some(lease),
                        ))
                        .await;
                    return Err(self.err(&format!("apply layer {}", layer.digest), e));
                }
            };
            if let Some(a) = applied {
                if a.digest != diff_ids[i] {
                    return Err(ImportError::Archive {
                        path: image.name.clone(),
                        reason: format!(
                            "layer {} unpacks to {}, but the config expects {}",
                            layer.digest, a.digest, diff_ids[i]
                        ),
                    });
                }
            }
            let commit = snapshots
                .commit(self.request(
                    CommitSnapshotRequest {
                        snapshotter: sn.clone(),
                        name: chain.clone(),
                        key,
                        labels: HashMap::new(),
                    },
                    Some(lease),
                ))
                .await;
            match commit {
                Ok(_) => {}
                Err(s) if s.code() == Code::AlreadyExists => {}
                Err(s) => return Err(self.err("commit snapshot", s)),
            }
        }
        // The config keeps the unpacked snapshot alive for the garbage collector.
        if let Some(top) = chains.last() {
            let mut content = ContentClient::new(self.channel.clone());
            let label = format!("containerd.io/gc.ref.snapshot.{sn}");
            content
                .update(self.request(
                    UpdateRequest {
                        info: Some(Info {
                            digest: image.config.digest.clone(),
                            labels: HashMap::from([(label.clone(), top.clone())]),
                            ..Default::default()
                        }),
                        update_mask: Some(prost_types::FieldMask {
                            paths: vec![format!("labels.{label}")],
                        }),
                    },
                    Some(lease),
                ))
                .await
                .map_err(|e| self.err("label config", e))?;
        }
        Ok(())
    }

    /// Creates the image record, or points an existing one at the new target.
    async fn set_image(&self, image: &Resolved, lease: &str) -> Result<(), ImportError> {
        let mut images = ImagesClient::new(self.channel.clone());
        let record = Image {
            name: image.name.clone(),
            labels: HashMap::new(),
            target: Some(image.target.to_proto()),
            created_at: None,
            updated_at: None,
        };
        let existing = images
            .get(self.request(
                GetImageRequest {
                    name: image.name.clone(),
                },
                Some(lease),
            ))
            .await;
        match existing {
            Ok(_) => {
                images
                    .update(self.request(
                        UpdateImageRequest {
                            image: Some(record),
                            update_mask: Some(prost_types::FieldMask {
                                paths: vec!["target".into()],
                            }),
                            source_date_epoch: None,
                        },
                        Some(lease),
                    ))
                    .await
                    .map_err(|e| self.err("update image", e))?;
            }
            Err(s) if s.code() == Code::NotFound => {
                images
                    .create(self.request(
                        CreateImageRequest {
                            image: Some(record),
                            source_date_epoch: None,
                        },
                        Some(lease),
                    ))
                    .await
                    .map_err(|e| self.err("create image", e))?;
            }
            Err(s) => return Err(self.err("get image", s)),
        }
        Ok(())
    }
}

/// Second pass for one large blob (layers): finds it in the archive and hands `f` a reader of
/// its bytes. Blocking: run it on a blocking thread.
fn with_blob_reader<T>(
    path: &Path,
    digest: &str,
    f: impl FnOnce(&mut dyn Read) -> Result<T, ImportError>,
) -> Result<T, ImportError> {
    let want = format!("blobs/sha256/{}", digest.trim_start_matches("sha256:"));
    let shown = path.display().to_string();
    let bad = |reason: String| ImportError::Archive {
        path: shown.clone(),
        reason,
    };
    let file = std::fs::File::open(path).map_err(|source| ImportError::Io {
        path: shown.clone(),
        source,
    })?;
    let mut tar = tar::Archive::new(std::io::BufReader::new(file));
    for entry in tar.entries().map_err(|e| bad(e.to_string()))? {
        let mut entry = entry.map_err(|e| bad(e.to_string()))?;
        let name = entry
            .path()
            .map_err(|e| bad(e.to_string()))?
            .to_string_lossy()
            .trim_start_matches("./")
            .to_string();
        if name == want {
            return f(&mut entry);
        }
    }
    Err(bad(format!("blob {want} vanished between two reads")))
}

/// Sends one blob to containerd's content store as Write messages of [`WRITE_CHUNK`] bytes,
/// then the Commit carrying `labels`, checking its SHA-256 on the way: a blob that does not
/// match its digest is never committed (the stream ends without a commit and the lease's
/// garbage collection takes what was written). Blocking: run it on a blocking thread.
fn send_blob(
    path: &Path,
    desc: &Desc,
    labels: HashMap<String, String>,
    reader: &mut dyn Read,
    tx: &tokio::sync::mpsc::Sender<WriteContentRequest>,
) -> Result<(), ImportError> {
    let bad = |reason: String| ImportError::Archive {
        path: path.display().to_string(),
        reason,
    };
    let reference = format!("skerry-import-{}", desc.digest);
    let mut hasher = Sha256::new();
    let mut offset: i64 = 0;
    let mut buf = vec![0u8; WRITE_CHUNK];
    loop {
        let mut filled = 0;
        while filled < buf.len() {
            let n = reader
                .read(&mut buf[filled..])
                .map_err(|e| bad(format!("cannot read blob {}: {e}", desc.digest)))?;
            if n == 0 {
                break;
            }
            filled += n;
        }
        if filled == 0 {
            break;
        }
        hasher.update(&buf[..filled]);
        let message = WriteContentRequest {
            action: WriteAction::Write as i32,
            r#ref: reference.clone(),
            total: desc.size,
            expected: desc.digest.clone(),
            offset,
            data: buf[..filled].to_vec(),
            labels: HashMap::new(),
        };
        if tx.blocking_send(message).is_err() {
            return Ok(()); // The RPC ended early; its own error is reported.
        }
        offset += filled as i64;
    }
    let got = format!("sha256:{}", hex::encode(hasher.finalize()));
    if got != desc.digest || offset != desc.size {
        return Err(bad(format!(
            "blob {} does not match its digest or size (the file is damaged)",
            desc.digest
        )));
    }
    let _ = tx.blocking_send(WriteContentRequest {
        action: WriteAction::Commit as i32,
        r#ref: reference,
        total: desc.size,
        expected: desc.digest.clone(),
        offset,
        data: vec![],
        labels,
    });
    Ok(())
}

/// RFC 3339 in UTC, for containerd's lease expiry label.
fn humantime_rfc3339(t: std::time::SystemTime) -> String {
    let secs = t
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0) as i64;
    protocol::timestamp::format(secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_ids_follow_the_oci_spec() {
        let a = "sha256:aaaa".to_string();
        let b = "sha256:bbbb".to_string();
        let chains = chain_ids(&[a.clone(), b.clone()]);
        assert_eq!(chains[0], a);
        assert_eq!(chains[1], sha256(b"sha256:aaaa sha256:bbbb"));
    }

    #[test]
    fn rfc3339_dates() {
        let t = std::time::UNIX_EPOCH + Duration::from_secs(1_795_000_000);
        assert_eq!(humantime_rfc3339(t), "2026-11-18T11:06:40Z");
        assert_eq!(
            humantime_rfc3339(std::time::UNIX_EPOCH),
            "1970-01-01T00:00:00Z"
        );
    }

    fn tar_with(files: &[(&str, Vec<u8>)]) -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().expect("temp");
        let mut b = tar::Builder::new(f.reopen().expect("reopen"));
        for (name, data) in files {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            b.append_data(&mut h, name, data.as_slice())
                .expect("append");
        }
        b.finish().expect("finish");
        f
    }

    #[test]
    fn blobs_stream_in_chunks_and_a_damaged_one_is_never_committed() {
        let data = vec![7u8; WRITE_CHUNK + 10];
        let desc = Desc {
            media_type: "application/vnd.oci.image.layer.v1.tar".into(),
            digest: sha256(&data),
            size: data.len() as i64,
        };
        let (tx, mut rx) = tokio::sync::mpsc::channel(8);
        send_blob(
            Path::new("x.tar"),
            &desc,
            HashMap::new(),
            &mut data.as_slice(),
            &tx,
        )
        .expect("sent");
        let mut got = Vec::new();
        while let Ok(m) = rx.try_recv() {
            got.push(m);
        }
        assert_eq!(got.len(), 3, "two chunks and the commit");
        assert_eq!(got[1].offset, WRITE_CHUNK as i64);
        assert_eq!(got[2].action, WriteAction::Commit as i32);

        let mut flipped = data.clone();
        flipped[5] ^= 1;
        let (tx, mut rx) = tokio::sync::mpsc::channel(8);
        let err = send_blob(
            Path::new("x.tar"),
            &desc,
            HashMap::new(),
            &mut flipped.as_slice(),
            &tx,
        )
        .expect_err("damaged");
        assert!(
            err.to_string().contains("does not match its digest"),
            "{err}"
        );
        let mut actions = Vec::new();
        while let Ok(m) = rx.try_recv() {
            actions.push(m.action);
        }
        assert!(
            !actions.contains(&(WriteAction::Commit as i32)),
            "{actions:?}"
        );
    }

    #[test]
    fn damaged_archives_get_clear_errors() {
        let garbage = tempfile::NamedTempFile::new().expect("temp");
        std::fs::write(garbage.path(), b"this is not a tar file at all, just text").expect("write");
        let err = scan(garbage.path()).err().expect("fails").to_string();
        assert!(err.contains("not a usable OCI image archive"), "{err}");

        let no_index = tar_with(&[("manifest.json", b"[]".to_vec())]);
        let err = scan(no_index.path()).err().expect("fails").to_string();
        assert!(err.contains("no index.json"), "{err}");

        let config = br#"{"rootfs":{"diff_ids":[]}}"#.to_vec();
        let cfg_digest = sha256(&config);
        let manifest = format!(
            r#"{{"schemaVersion":2,"config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{cfg_digest}","size":{}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"sha256:00","size":5}}]}}"#,
            config.len()
        )
        .into_bytes();
        let m_digest = sha256(&manifest);
        let index = format!(
            r#"{{"manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{m_digest}","size":{},"annotations":{{"io.containerd.image.name":"x.local/y:1"}}}}]}}"#,
            manifest.len()
        )
        .into_bytes();
        let missing_layer = tar_with(&[
            ("index.json", index),
            (&format!("blobs/sha256/{}", &m_digest[7..]), manifest),
            (&format!("blobs/sha256/{}", &cfg_digest[7..]), config),
        ]);
        let archive = scan(missing_layer.path()).expect("scans");
        let err = resolve(&archive, "amd64").err().expect("fails");
        assert!(
            err.contains("sha256:00") && err.contains("missing"),
            "{err}"
        );
    }
}
