//! The I/O half of the Service proxy: runs `nft -f -` with a [`Ruleset`]'s transaction, only
//! when the rendered table changed, and flushes the UDP conntrack entries of endpoints that
//! left (kube-proxy does the same: UDP has no end of connection, so an entry would keep
//! sending a client's datagrams to a gone endpoint until it idles out).
//!
//! Guarantees: the table is replaced in one nftables transaction (the kernel applies all of it
//! or none of it, so no packet sees a half-written table); after a failed apply the next one
//! is a full replacement (the table's state is then whatever the last good apply left, which
//! the kernel kept whole); nothing here panics on a tool's failure.

use super::ruleset::{Ruleset, UdpFront};
use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::Stdio;
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

/// Where and with what the proxy runs its tools.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tools {
    /// The `nft` binary.
    pub nft: PathBuf,
    /// The `conntrack` binary (Debian's `conntrack` package).
    pub conntrack: PathBuf,
    /// Run the tools inside this named network namespace (`ip netns exec NAME`): the tests
    /// program a "node" namespace and never touch the host's tables. `None` in production.
    pub netns: Option<String>,
}

impl Default for Tools {
    fn default() -> Self {
        Tools {
            nft: "nft".into(),
            conntrack: "conntrack".into(),
            netns: None,
        }
    }
}

/// Why an apply or a clean-up failed.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The tool could not be started.
    #[error("cannot run {program}: {source}; install Debian's nftables and conntrack packages (deploy/setup.sh does)")]
    Spawn {
        /// What was run.
        program: String,
        /// Why it did not start.
        source: std::io::Error,
    },
    /// `nft` refused the transaction (the kernel kept the previous table whole).
    #[error("nft refused the ruleset of table {table} ({status}): {message}")]
    Nft {
        /// The table.
        table: String,
        /// Its exit status.
        status: String,
        /// What nft said on stderr.
        message: String,
    },
}

/// Output of one tool run.
struct Ran {
    ok: bool,
    status: String,
    stdout: String,
    stderr: String,
}

impl Tools {
    fn command(&self, program: &std::path::Path) -> Command {
        let mut cmd = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(program);
                c
            }
            None => Command::new(program),
        };
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        cmd
    }

    async fn run(
        &self,
        program: &std::path::Path,
        args: &[&str],
        stdin: Option<&str>,
    ) -> Result<Ran, ApplyError> {
        let mut cmd = self.command(program);
        cmd.args(args);
        if stdin.is_some() {
            cmd.stdin(Stdio::piped());
        }
        let spawn_err = |source| ApplyError::Spawn {
            program: program.display().to_string(),
            source,
        };
        let mut child = cmd.spawn().map_err(spawn_err)?;
        if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
            // A write error shows up as nft's own failure below.
            let _ = pipe.write_all(text.as_bytes()).await;
            drop(pipe);
        }
        let out = child.wait_with_output().await.map_err(spawn_err)?;
        Ok(Ran {
            ok: out.status.success(),
            status: out.status.to_string(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }

    /// `nft -f -` with `text`.
    pub async fn nft_apply(&self, table: &str, text: &str) -> Result<(), ApplyError> {
        let ran = self.run(&self.nft, &["-f", "-"], Some(text)).await?;
        if ran.ok {
            return Ok(());
        }
        Err(ApplyError::Nft {
            table: table.to_string(),
            status: ran.status,
            message: ran.stderr,
        })
    }

    /// Whether this process can program nftables at all: `nft` is there and may list the
    /// tables (which needs root or CAP_NET_ADMIN). Checked once at start, so that a node that
    /// cannot route Services says so in one clear line instead of failing every apply.
    pub async fn preflight(&self) -> Result<(), String> {
        let uid = nix::unistd::geteuid();
        let who = if uid.is_root() {
            String::new()
        } else {
            format!(" (edgecore runs as uid {uid}, not root: it needs root or CAP_NET_ADMIN)")
        };
        match self.run(&self.nft, &["list", "tables", "ip"], None).await {
            Ok(r) if r.ok => Ok(()),
            Ok(r) => Err(format!(
                "{} list tables failed ({}): {}{who}",
                self.nft.display(),
                r.status,
                r.stderr
            )),
            Err(e) => Err(format!("{e}{who}")),
        }
    }

    /// The value of an integer sysctl (`sysctl -n KEY`), if it can be read.
    pub async fn sysctl_get(&self, key: &str) -> Option<u64> {
        let ran = self
            .run(std::path::Path::new("sysctl"), &["-n", key], None)
            .await
            .ok()?;
        ran.ok.then(|| ran.stdout.trim().parse().ok()).flatten()
    }

    /// Sets an integer sysctl (`sysctl -w KEY=VALUE`); the error in words.
    pub async fn sysctl_set(&self, key: &str, value: u64) -> Result<(), String> {
        let arg = format!("{key}={value}");
        match self
            .run(std::path::Path::new("sysctl"), &["-q", "-w", &arg], None)
            .await
        {
            Ok(r) if r.ok => Ok(()),
            Ok(r) => Err(format!(
                "sysctl -w {arg} failed ({}): {}",
                r.status, r.stderr
            )),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Whether `conntrack` can be run (only UDP endpoint changes need it).
    pub async fn conntrack_present(&self) -> bool {
        self.run(&self.conntrack, &["--version"], None)
            .await
            .is_ok_and(|r| r.ok)
    }

    /// Whether the `ip` table `table` exists (`nft list tables ip`, cheap whatever its size).
    pub async fn table_exists(&self, table: &str) -> Result<bool, ApplyError> {
        let ran = self.run(&self.nft, &["list", "tables", "ip"], None).await?;
        Ok(ran
            .stdout
            .lines()
            .any(|l| l.trim() == format!("table ip {table}")))
    }

    /// The node's global IPv4 addresses, as `ip -4 -o addr show scope global` lists them.
    pub async fn node_ipv4(&self) -> Result<Vec<Ipv4Addr>, ApplyError> {
        let ran = self
            .run(
                std::path::Path::new("ip"),
                &["-4", "-o", "addr", "show", "scope", "global"],
                None,
            )
            .await?;
        Ok(ran
            .stdout
            .lines()
            .filter_map(|l| {
                let mut words = l.split_whitespace();
                words.find(|w| *w == "inet")?;
                words.next()?.split('/').next()?.parse().ok()
            })
            .collect())
    }

    /// Deletes the UDP conntrack entries of one front that were DNATed to `endpoint`.
    /// Returns how it went in words for the log; "nothing to delete" is success.
    async fn flush_udp(&self, front: UdpFront, endpoint: Ipv4Addr) -> Result<(), String> {
        let ep = endpoint.to_string();
        let (dst, port) = match front {
            UdpFront::ClusterIp(ip, port) => (Some(ip.to_string()), port),
            UdpFront::NodePort(port) => (None, port),
        };
        let port = port.to_string();
        let mut args = vec!["-D", "-p", "udp"];
        if let Some(d) = &dst {
            args.extend(["--orig-dst", d.as_str()]);
        }
        args.extend(["--orig-port-dst", port.as_str(), "--reply-src", ep.as_str()]);
        match self.run(&self.conntrack, &args, None).await {
            Ok(r) if r.ok || r.stderr.contains("0 flow entries") => Ok(()),
            Ok(r) => Err(format!(
                "conntrack {} failed ({}): {}",
                args.join(" "),
                r.status,
                r.stderr
            )),
            Err(e) => Err(e.to_string()),
        }
    }
}

/// What one [`Applier::sync`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Synced {
    /// The table already matched.
    Unchanged,
    /// A transaction ran; this many UDP conntrack flushes failed (logged).
    Applied {
        /// Failed conntrack flushes.
        conntrack_failures: usize,
    },
}

/// Keeps one table equal to the latest ruleset it was given.
#[derive(Debug)]
pub struct Applier {
    tools: Tools,
    applied: Option<(Ruleset, String)>,
    /// The UDP fronts of the last successful apply (kept across a failed one, so the flush
    /// after the next success still sees what left).
    udp: BTreeMap<UdpFront, BTreeSet<Ipv4Addr>>,
}

impl Applier {
    /// An applier that has applied nothing yet (its first sync replaces the table whole).
    pub fn new(tools: Tools) -> Self {
        Applier {
            tools,
            applied: None,
            udp: BTreeMap::new(),
        }
    }

    /// The tools it runs.
    pub fn tools(&self) -> &Tools {
        &self.tools
    }

    /// Makes the table equal to `next` if its text differs from the last applied one.
    pub async fn sync(&mut self, next: Ruleset) -> Result<Synced, ApplyError> {
        let text = next.render();
        if matches!(&self.applied, Some((_, t)) if *t == text) {
            return Ok(Synced::Unchanged);
        }
        let tx = next.transaction(self.applied.as_ref().map(|(r, _)| r));
        if let Err(e) = self.tools.nft_apply(next.table(), &tx).await {
            // The kernel kept the previous table whole, but start over with a full
            // replacement next time: it is correct whatever the table holds.
            self.applied = None;
            return Err(e);
        }
        let old_udp = std::mem::replace(&mut self.udp, next.udp.clone());
        self.applied = Some((next, text));
        let mut conntrack_failures = 0;
        for (front, old) in &old_udp {
            let kept = self.udp.get(front);
            for ep in old {
                if kept.is_some_and(|k| k.contains(ep)) {
                    continue;
                }
                if let Err(msg) = self.tools.flush_udp(*front, *ep).await {
                    tracing::warn!(%msg, "stale UDP conntrack entries of a gone endpoint stay until they idle out");
                    conntrack_failures += 1;
                }
            }
        }
        Ok(Synced::Applied { conntrack_failures })
    }

    /// Forgets what was applied, so the next sync replaces the table whole (used when the
    /// table turned out to be gone or changed behind the proxy's back).
    pub fn forget(&mut self) {
        self.applied = None;
    }

    /// Removes the table (clean shutdown). A table that is not there is fine.
    pub async fn remove(&mut self, table: &str) -> Result<(), ApplyError> {
        self.applied = None;
        let text = format!("add table ip {table}\ndelete table ip {table}\n");
        self.tools.nft_apply(table, &text).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_start_up_check_names_a_missing_nft_and_what_to_install() {
        let tools = Tools {
            nft: "/nonexistent/skerry-test/nft".into(),
            ..Tools::default()
        };
        let err = tools.preflight().await.unwrap_err();
        assert!(err.contains("/nonexistent/skerry-test/nft"), "{err}");
        assert!(err.contains("nftables"), "{err}");
        let tools = Tools {
            conntrack: "/nonexistent/skerry-test/conntrack".into(),
            ..Tools::default()
        };
        assert!(!tools.conntrack_present().await);
    }
}
