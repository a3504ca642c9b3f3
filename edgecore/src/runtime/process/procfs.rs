//! `/proc` probing and process-group signals: whether a recorded pid is still the process it
//! was (its start time guards against pid reuse), and signalling a container's whole group.

use super::internal;
use crate::runtime::RuntimeError;
use nix::errno::Errno;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

/// Sends `signal` to the process group led by `pid`; a group that is gone is fine.
pub(super) fn signal_group(pid: u32, signal: Signal) -> Result<(), RuntimeError> {
    match killpg(Pid::from_raw(pid as i32), signal) {
        Ok(()) | Err(Errno::ESRCH) => Ok(()),
        Err(e) => Err(internal(
            "stop container",
            format!("cannot send {signal} to process group {pid}: {e}"),
        )),
    }
}

/// Parses `/proc/<pid>/stat`: (state, start time).
pub(super) fn parse_stat(stat: &str) -> Option<(char, u64)> {
    // The command name (field 2) is parenthesised and may contain anything, so fields are
    // counted after its last ')'. Field 3 is the state, field 22 the start time.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let start = fields.nth(18)?.parse().ok()?;
    Some((state, start))
}

pub(super) fn proc_start_time_sync(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&stat).map(|(_, start)| start)
}

/// Whether `pid` is a live (not zombie) process started at `start_time` (0: not checked).
pub(super) async fn proc_alive(pid: u32, start_time: u64) -> bool {
    if pid == 0 {
        return false;
    }
    let Ok(stat) = tokio::fs::read_to_string(format!("/proc/{pid}/stat")).await else {
        return false;
    };
    match parse_stat(&stat) {
        Some((state, start)) => {
            !matches!(state, 'Z' | 'X' | 'x') && (start_time == 0 || start == start_time)
        }
        None => false,
    }
}
