//! Traffic of one private port on the loopback interface: counted, or cut in one direction,
//! with iptables rules on the INPUT chain (where a drop is silent, as on a real network; an
//! OUTPUT drop would hand the sender EPERM).
//!
//! On `lo` every packet crosses INPUT once, so for a server on `port` the packets with
//! destination port `port` are the clients' (towards the server) and those with source port
//! `port` the server's answers. Counters include IP and transport headers: bytes on the wire.
//! Each rule carries a comment naming this process and a sequence number, and is removed on
//! drop; rules of a test process that died are swept (by comment) at the next use.

use anyhow::{bail, Context, Result};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};

/// Transport protocol of a port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    /// UDP (the QUIC hub).
    Udp,
    /// TCP (MQTT, the API).
    Tcp,
}

impl Proto {
    fn name(self) -> &'static str {
        match self {
            Proto::Udp => "udp",
            Proto::Tcp => "tcp",
        }
    }
}

/// Which way, relative to the server on the port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Client → server (destination port is the port).
    ToServer,
    /// Server → client (source port is the port).
    ToClient,
}

impl Direction {
    fn flag(self) -> &'static str {
        match self {
            Direction::ToServer => "--dport",
            Direction::ToClient => "--sport",
        }
    }
}

static SEQ: AtomicU64 = AtomicU64::new(0);

/// Whether iptables can be used here (root, the binary present). Under `CI=true` its absence
/// is an error, never a skip.
pub fn available() -> Result<bool> {
    let ok = Command::new("iptables")
        .args(["-w", "-L", "INPUT", "-n"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !ok && std::env::var("CI").as_deref() == Ok("true") {
        bail!("iptables is not usable (not root, or not installed: deploy/setup.sh installs it)");
    }
    Ok(ok)
}

fn iptables(args: &[&str]) -> Result<String> {
    let out = Command::new("iptables")
        .arg("-w")
        .args(args)
        .output()
        .context("running iptables")?;
    if !out.status.success() {
        bail!(
            "iptables {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Removes the rules left by test processes that no longer exist.
fn sweep() {
    let Ok(rules) = iptables(&["-S", "INPUT"]) else {
        return;
    };
    for rule in rules.lines() {
        let Some(pid) = rule
            .split("skerry-lo-")
            .nth(1)
            .and_then(|rest| rest.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if std::path::Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        if let Some(spec) = rule.strip_prefix("-A INPUT ") {
            let mut args = vec!["-D", "INPUT"];
            let parts: Vec<String> = shell_words(spec);
            args.extend(parts.iter().map(String::as_str));
            let _ = iptables(&args);
        }
    }
}

/// Splits an `iptables -S` rule into words, keeping a quoted comment whole.
fn shell_words(spec: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    for ch in spec.chars() {
        match ch {
            '"' => quoted = !quoted,
            ' ' if !quoted => {
                if !cur.is_empty() {
                    words.push(std::mem::take(&mut cur));
                }
            }
            c => cur.push(c),
        }
    }
    if !cur.is_empty() {
        words.push(cur);
    }
    words
}

/// One rule on INPUT, removed on drop.
struct Rule {
    spec: Vec<String>,
    comment: String,
}

impl Rule {
    fn insert(proto: Proto, port: u16, dir: Direction, target: Option<&str>) -> Result<Self> {
        sweep();
        let comment = format!(
            "skerry-lo-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let mut spec: Vec<String> = [
            "-i",
            "lo",
            "-p",
            proto.name(),
            dir.flag(),
            &port.to_string(),
            "-m",
            "comment",
            "--comment",
            &comment,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        if let Some(t) = target {
            spec.extend(["-j".to_string(), t.to_string()]);
        }
        let mut args = vec!["-I", "INPUT"];
        args.extend(spec.iter().map(String::as_str));
        iptables(&args)?;
        Ok(Self { spec, comment })
    }

    /// Bytes the rule has matched.
    fn bytes(&self) -> Result<u64> {
        let listing = iptables(&["-L", "INPUT", "-v", "-n", "-x"])?;
        let line = listing
            .lines()
            .find(|l| l.contains(&self.comment))
            .with_context(|| format!("rule {} is gone", self.comment))?;
        let mut fields = line.split_whitespace();
        let _packets = fields.next();
        fields
            .next()
            .and_then(|b| b.parse().ok())
            .with_context(|| format!("cannot read the byte counter of {line:?}"))
    }
}

impl Drop for Rule {
    fn drop(&mut self) {
        let mut args = vec!["-D", "INPUT"];
        args.extend(self.spec.iter().map(String::as_str));
        let _ = iptables(&args);
    }
}

/// Counts the bytes both ways of a server port.
pub struct PortCounter {
    to_server: Rule,
    to_client: Rule,
}

impl PortCounter {
    /// Starts counting `proto` traffic of `port` (a rule without a target only counts).
    pub fn new(proto: Proto, port: u16) -> Result<Self> {
        Ok(Self {
            to_server: Rule::insert(proto, port, Direction::ToServer, None)?,
            to_client: Rule::insert(proto, port, Direction::ToClient, None)?,
        })
    }

    /// Bytes so far: (towards the server, towards its clients).
    pub fn bytes(&self) -> Result<(u64, u64)> {
        Ok((self.to_server.bytes()?, self.to_client.bytes()?))
    }
}

/// A silent cut of one direction of a server port; healed on drop (or by [`Cut::heal`]).
pub struct Cut {
    _rule: Rule,
}

impl Cut {
    /// Drops every `proto` packet of `port` going `dir`.
    pub fn new(proto: Proto, port: u16, dir: Direction) -> Result<Self> {
        Ok(Self {
            _rule: Rule::insert(proto, port, dir, Some("DROP"))?,
        })
    }

    /// Ends the cut.
    pub fn heal(self) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listed_rule_splits_into_its_words_with_the_comment_whole() {
        let w = shell_words(
            r#"-i lo -p udp -m udp --dport 5 -m comment --comment "skerry-lo-1-2" -j DROP"#,
        );
        assert_eq!(w[9], "skerry-lo-1-2");
        assert_eq!(w.last().unwrap(), "DROP");
    }
}
