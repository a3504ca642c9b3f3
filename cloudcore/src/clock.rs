//! The clock, in the forms the API needs: Kubernetes timestamps are RFC 3339 UTC with second
//! precision, formatted by [`protocol::timestamp`].

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Seconds since the Unix epoch, now.
pub fn now_seconds() -> i64 {
    (now_ms() / 1000) as i64
}

/// Formats milliseconds since the epoch as a Kubernetes timestamp (`2026-11-25T17:00:00Z`).
pub fn rfc3339(ms: u64) -> String {
    protocol::timestamp::format((ms / 1000) as i64)
}

/// Now, as a Kubernetes timestamp.
pub fn now_rfc3339() -> String {
    rfc3339(now_ms())
}

#[cfg(test)]
mod tests {
    #[test]
    fn formats_like_kubernetes() {
        assert_eq!(super::rfc3339(1_700_000_000_999), "2023-11-14T22:13:20Z");
    }
}
