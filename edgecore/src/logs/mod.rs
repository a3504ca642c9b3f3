//! Container logs as kubelet serves them: the one reader behind `kubectl logs` (through the
//! cloud, see [`serve`]) and the offline `edgecore logs` on the node itself.
//!
//! Both runtimes keep a container instance's log at `<pods>/<pod uid>/logs/<container>/
//! <attempt>.log` (the CRI runtime's rotation keeps the previous generation beside it as
//! `<attempt>.log.1`), so which file to read is decided here, from the files and the runtime's
//! list of instances, once for both. What differs is the format:
//!
//! - **CRI** (containerd): `<RFC 3339 nano time> <stdout|stderr> <P|F> <message>` per physical
//!   line. As kubelet does, the prefix is stripped (kept as `<time> ` with `timestamps`), a `P`
//!   (partial) record gets no newline, and `since` compares the record's own time.
//! - **Raw** (process runtime): the program's bytes as it wrote them. There are no timestamps, so
//!   `timestamps` and `since` are refused with a clear error instead of being ignored.
//!
//! `tail` counts physical lines from the end (kubelet's rule), across the rotated generation when
//! the current one is short; `limit_bytes` cuts the output exactly there. `follow` polls the file
//! for appended data (a few ms of latency, no inotify dependency), reopens it when rotation
//! replaced it, and ends once the container instance is no longer running and its file is
//! drained.

pub mod serve;
#[cfg(test)]
mod tests;

use crate::runtime::{ContainerRunState, Runtime, RuntimeError, Sandbox};
use protocol::streams::{LogRefusal, LogRequest, LogSince};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWrite, AsyncWriteExt};

/// How a runtime writes its container logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// containerd's CRI format (timestamped records).
    Cri,
    /// The program's own bytes (process runtime).
    Raw,
}

/// Why a log could not be served.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// No such pod or container here.
    #[error("{0}")]
    NotFound(String),
    /// The request cannot be served as asked.
    #[error("{0}")]
    BadRequest(String),
    /// Reading the log failed.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The runtime failed listing the pods.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    /// The reader went away (the client left, the link dropped).
    #[error("the log's reader went away: {0}")]
    Write(std::io::Error),
}

impl LogError {
    /// The refusal the cloud maps to an HTTP status.
    pub fn refusal(&self) -> LogRefusal {
        match self {
            LogError::NotFound(_) => LogRefusal::NotFound,
            LogError::BadRequest(_) => LogRefusal::BadRequest,
            LogError::Read { .. } | LogError::Runtime(_) | LogError::Write(_) => {
                LogRefusal::Internal
            }
        }
    }
}

/// How often a followed log is polled for appended data.
const FOLLOW_POLL: Duration = Duration::from_millis(100);
/// How often a followed container is asked whether it still runs.
const LIVENESS_EVERY: u32 = 10;
/// Read size.
const CHUNK: usize = 64 * 1024;

/// Finds and reads container logs of one runtime.
#[derive(Clone)]
pub struct LogReader {
    runtime: Arc<dyn Runtime>,
    pods_root: PathBuf,
    format: LogFormat,
}

/// A resolved log: the files to read, in order, and the instance to follow if it runs.
pub struct OpenLog {
    files: Vec<PathBuf>,
    follow: Option<(Sandbox, String)>,
    request: LogRequest,
    format: LogFormat,
    since_nanos: Option<i64>,
}

impl LogReader {
    /// A reader of `runtime`'s logs under `pods_root` (`<data-dir>/pods`).
    pub fn new(runtime: Arc<dyn Runtime>, pods_root: PathBuf, format: LogFormat) -> Self {
        Self {
            runtime,
            pods_root,
            format,
        }
    }

    /// Resolves `req` to files, or refuses it with kubelet's words. An empty `req.uid` matches
    /// the pod by namespace and name only (the offline command does not know the UID).
    pub async fn open(&self, req: &LogRequest) -> Result<OpenLog, LogError> {
        if self.format == LogFormat::Raw && (req.timestamps || req.since.is_some()) {
            return Err(LogError::BadRequest(
                "this node's process runtime does not record when log lines were written, so \
                 timestamps and since-filters cannot be served; read the whole log or use --tail"
                    .into(),
            ));
        }
        let pods = self.runtime.list_pods().await?;
        let pod = pods
            .iter()
            .filter(|p| p.namespace == req.namespace && p.name == req.pod)
            .find(|p| req.uid.is_empty() || p.sandbox.pod_uid == req.uid)
            .ok_or_else(|| {
                LogError::NotFound(format!(
                    "pod \"{}/{}\" is not running on this node",
                    req.namespace, req.pod
                ))
            })?;
        let uid = &pod.sandbox.pod_uid;
        if !safe_component(uid) || !safe_component(&req.container) {
            return Err(LogError::NotFound(format!(
                "container \"{}\" not found in pod \"{}\"",
                req.container, req.pod
            )));
        }
        let dir = self.pods_root.join(uid).join("logs").join(&req.container);
        let attempts = attempts_in(&dir).await.map_err(|source| LogError::Read {
            path: dir.clone(),
            source,
        })?;
        let Some(&current) = attempts.last() else {
            return Err(LogError::BadRequest(format!(
                "container \"{}\" in pod \"{}\" is waiting to start: ContainerCreating",
                req.container, req.pod
            )));
        };
        let attempt = if req.previous {
            match attempts.iter().rev().nth(1) {
                Some(&a) => a,
                None => {
                    return Err(LogError::BadRequest(format!(
                        "previous terminated container \"{}\" in pod \"{}\" not found",
                        req.container, req.pod
                    )))
                }
            }
        } else {
            current
        };
        let log = dir.join(format!("{attempt}.log"));
        let mut files = Vec::new();
        let rotated = rotated_path(&log);
        if tokio::fs::metadata(&rotated).await.is_ok() {
            files.push(rotated);
        }
        files.push(log);
        // Only a running current instance is followed; a finished one is read to its end.
        let follow = if req.follow && !req.previous {
            pod.containers
                .iter()
                .find(|c| c.name == req.container && c.attempt == current)
                .filter(|c| is_live(&c.state))
                .map(|c| (pod.sandbox.clone(), c.id.clone()))
        } else {
            None
        };
        let since_nanos = req.since.map(|s| match s {
            LogSince::UnixNanos(n) => n,
            LogSince::Seconds(secs) => {
                let now = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_nanos() as i64)
                    .unwrap_or(0);
                now.saturating_sub((secs as i64).saturating_mul(1_000_000_000))
            }
        });
        Ok(OpenLog {
            files,
            follow,
            request: req.clone(),
            format: self.format,
            since_nanos,
        })
    }

    /// Writes the log `open` resolved to `out`, following it if asked, until it ends, the limit
    /// is reached, or `out` fails. Returns the bytes written.
    pub async fn copy<W: AsyncWrite + Unpin>(
        &self,
        log: OpenLog,
        out: &mut W,
    ) -> Result<u64, LogError> {
        let mut emit = Emitter {
            out,
            format: log.format,
            timestamps: log.request.timestamps,
            since_nanos: log.since_nanos,
            remaining: log.request.limit_bytes,
            written: 0,
            pending: Vec::new(),
        };
        let (first, mut offset) = match log.request.tail_lines {
            Some(n) => {
                let files = log.files.clone();
                tokio::task::spawn_blocking(move || tail_start(&files, n))
                    .await
                    .map_err(|e| LogError::Write(std::io::Error::other(e)))?
                    .map_err(|(path, source)| LogError::Read { path, source })?
            }
            None => (0, 0),
        };
        let last = log.files.len() - 1;
        for (i, path) in log.files.iter().enumerate().skip(first) {
            let follow = if i == last { log.follow.as_ref() } else { None };
            if self.copy_file(path, offset, follow, &mut emit).await? {
                return Ok(emit.written);
            }
            emit.end_of_file().await?;
            offset = 0;
        }
        emit.out.flush().await.map_err(LogError::Write)?;
        Ok(emit.written)
    }

    /// Copies one file from `offset`; with `follow`, keeps reading appended data until the
    /// instance stops running. `Ok(true)` when the byte limit was reached.
    async fn copy_file<W: AsyncWrite + Unpin>(
        &self,
        path: &Path,
        offset: u64,
        follow: Option<&(Sandbox, String)>,
        emit: &mut Emitter<'_, W>,
    ) -> Result<bool, LogError> {
        let read_err = |source| LogError::Read {
            path: path.to_path_buf(),
            source,
        };
        let mut file = tokio::fs::File::open(path).await.map_err(read_err)?;
        file.seek(std::io::SeekFrom::Start(offset))
            .await
            .map_err(read_err)?;
        let mut buf = vec![0u8; CHUNK];
        let mut idle_polls = 0u32;
        let mut ending = false;
        loop {
            let n = file.read(&mut buf).await.map_err(read_err)?;
            if n > 0 {
                if emit.feed(&buf[..n]).await? {
                    return Ok(true);
                }
                continue;
            }
            let Some((sandbox, id)) = follow else {
                return Ok(false);
            };
            if ending {
                return Ok(false);
            }
            // At the end: flush what was written so far before waiting for more.
            emit.out.flush().await.map_err(LogError::Write)?;
            if replaced(&file, path).await {
                // Rotated: what was appended to the old file is drained above; go on with
                // the new one.
                emit.end_of_file().await?;
                file = tokio::fs::File::open(path).await.map_err(read_err)?;
                continue;
            }
            idle_polls += 1;
            if idle_polls >= LIVENESS_EVERY {
                idle_polls = 0;
                let live = matches!(
                    self.runtime.container_state(sandbox, id).await,
                    Ok(state) if is_live(&state)
                );
                if !live {
                    // One more pass to pick up what it wrote just before it ended.
                    ending = true;
                    continue;
                }
            }
            tokio::time::sleep(FOLLOW_POLL).await;
        }
    }
}

fn is_live(state: &ContainerRunState) -> bool {
    matches!(
        state,
        ContainerRunState::Running { .. } | ContainerRunState::Created
    )
}

/// Whether the file at `path` is no longer the one `file` has open (log rotation).
async fn replaced(file: &tokio::fs::File, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let (Ok(open), Ok(now)) = (file.metadata().await, tokio::fs::metadata(path).await) else {
        return false;
    };
    (open.dev(), open.ino()) != (now.dev(), now.ino())
}

/// The previous generation of a rotated log: `<attempt>.log.1`.
fn rotated_path(log: &Path) -> PathBuf {
    let mut name = log.as_os_str().to_owned();
    name.push(".1");
    PathBuf::from(name)
}

/// A name that stays one path component.
fn safe_component(s: &str) -> bool {
    !s.is_empty() && s != "." && s != ".." && !s.contains('/') && !s.contains('\0')
}

/// The attempts with a log in `dir`, ascending; empty when the directory does not exist.
async fn attempts_in(dir: &Path) -> std::io::Result<Vec<u32>> {
    let mut entries = match tokio::fs::read_dir(dir).await {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut attempts = Vec::new();
    while let Some(entry) = entries.next_entry().await? {
        if let Some(a) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.strip_suffix(".log"))
            .and_then(|n| n.parse::<u32>().ok())
        {
            attempts.push(a);
        }
    }
    attempts.sort_unstable();
    Ok(attempts)
}

/// Where the last `n` lines of the concatenation of `files` start: (file index, offset). A
/// newline that ends the last file ends the last line rather than starting an empty one.
pub(crate) fn tail_start(
    files: &[PathBuf],
    n: u64,
) -> Result<(usize, u64), (PathBuf, std::io::Error)> {
    use std::io::{Read, Seek, SeekFrom};
    let last = files.len() - 1;
    let mut newlines = 0u64;
    let mut at_very_end = true;
    for i in (0..files.len()).rev() {
        let path = &files[i];
        let err = |e| (path.clone(), e);
        let mut f = std::fs::File::open(path).map_err(err)?;
        let mut pos = f.metadata().map_err(err)?.len();
        if n == 0 {
            return Ok((last, pos));
        }
        let mut chunk = vec![0u8; CHUNK];
        while pos > 0 {
            let len = (CHUNK as u64).min(pos) as usize;
            pos -= len as u64;
            f.seek(SeekFrom::Start(pos)).map_err(err)?;
            f.read_exact(&mut chunk[..len]).map_err(err)?;
            for j in (0..len).rev() {
                if chunk[j] != b'\n' {
                    at_very_end = false;
                    continue;
                }
                if at_very_end {
                    at_very_end = false;
                    continue;
                }
                newlines += 1;
                if newlines == n {
                    return Ok((i, pos + j as u64 + 1));
                }
            }
        }
    }
    Ok((0, 0))
}

/// Turns file bytes into what the client sees, and counts them against the limit.
struct Emitter<'a, W> {
    out: &'a mut W,
    format: LogFormat,
    timestamps: bool,
    since_nanos: Option<i64>,
    remaining: Option<u64>,
    written: u64,
    /// A CRI record whose newline has not been read yet.
    pending: Vec<u8>,
}

impl<W: AsyncWrite + Unpin> Emitter<'_, W> {
    /// Takes bytes read from a file; `Ok(true)` once the byte limit is reached.
    async fn feed(&mut self, bytes: &[u8]) -> Result<bool, LogError> {
        if self.format == LogFormat::Raw {
            return self.emit(bytes).await;
        }
        let mut rest = bytes;
        while let Some(i) = rest.iter().position(|b| *b == b'\n') {
            let done = if self.pending.is_empty() {
                self.record(&rest[..i]).await?
            } else {
                let mut line = std::mem::take(&mut self.pending);
                line.extend_from_slice(&rest[..i]);
                self.record(&line).await?
            };
            if done {
                return Ok(true);
            }
            rest = &rest[i + 1..];
        }
        self.pending.extend_from_slice(rest);
        Ok(false)
    }

    /// A file ended: a record without its newline is taken as it is.
    async fn end_of_file(&mut self) -> Result<(), LogError> {
        if !self.pending.is_empty() {
            let line = std::mem::take(&mut self.pending);
            self.record(&line).await?;
        }
        Ok(())
    }

    /// One CRI record (without its newline).
    async fn record(&mut self, line: &[u8]) -> Result<bool, LogError> {
        if line.is_empty() {
            return Ok(false);
        }
        let Some(rec) = parse_cri(line) else {
            // Not a record: shown whole rather than hidden.
            if self.since_nanos.is_some() {
                return Ok(false);
            }
            return Ok(self.emit(line).await? || self.emit(b"\n").await?);
        };
        if let Some(since) = self.since_nanos {
            match protocol::timestamp::parse_nanos(rec.time) {
                Some(t) if t >= since => {}
                _ => return Ok(false),
            }
        }
        if self.timestamps {
            let mut prefix = rec.time.as_bytes().to_vec();
            prefix.push(b' ');
            if self.emit(&prefix).await? {
                return Ok(true);
            }
        }
        if self.emit(rec.message).await? {
            return Ok(true);
        }
        if !rec.partial {
            return self.emit(b"\n").await;
        }
        Ok(false)
    }

    /// Writes `data`, cut at the limit; `Ok(true)` once the limit is reached.
    async fn emit(&mut self, data: &[u8]) -> Result<bool, LogError> {
        let take = match self.remaining {
            Some(r) => data.len().min(usize::try_from(r).unwrap_or(usize::MAX)),
            None => data.len(),
        };
        self.out
            .write_all(&data[..take])
            .await
            .map_err(LogError::Write)?;
        self.written += take as u64;
        if let Some(r) = &mut self.remaining {
            *r -= take as u64;
            if *r == 0 {
                self.out.flush().await.map_err(LogError::Write)?;
                return Ok(true);
            }
        }
        Ok(false)
    }
}

/// One CRI log record.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct CriRecord<'a> {
    pub time: &'a str,
    pub partial: bool,
    pub message: &'a [u8],
}

/// Parses `<time> <stdout|stderr> <tags> <message>`; a record without tags (the format before
/// tags existed) is a full line. `None` when the line is not a record.
pub(crate) fn parse_cri(line: &[u8]) -> Option<CriRecord<'_>> {
    let sp = line.iter().position(|b| *b == b' ')?;
    let time = std::str::from_utf8(&line[..sp]).ok()?;
    let rest = &line[sp + 1..];
    let (stream, after) = match rest.iter().position(|b| *b == b' ') {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, &rest[rest.len()..]),
    };
    if stream != b"stdout" && stream != b"stderr" {
        return None;
    }
    let (tag, message) = match after.iter().position(|b| *b == b' ') {
        Some(i) => (&after[..i], &after[i + 1..]),
        None => (after, &after[after.len()..]),
    };
    let first = tag.split(|b| *b == b':').next().unwrap_or(b"");
    match first {
        b"P" => Some(CriRecord {
            time,
            partial: true,
            message,
        }),
        b"F" => Some(CriRecord {
            time,
            partial: false,
            message,
        }),
        _ => Some(CriRecord {
            time,
            partial: false,
            message: after,
        }),
    }
}
