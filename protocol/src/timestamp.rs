//! Timestamps as Kubernetes writes them: RFC 3339 in UTC with second precision
//! (`2026-11-25T17:00:00Z`), as `metav1.Time` marshals, and parsed from any RFC 3339 form.
//!
//! The one formatter and parser of the workspace, pure (no clock: callers pass the time), so
//! both daemons and the wire model share it. The calendar arithmetic is jiff's.

/// Formats seconds since the Unix epoch, or `None` outside the years -9999 to 9999.
pub fn checked_format(secs: i64) -> Option<String> {
    let t = jiff::Timestamp::from_second(secs).ok()?;
    Some(t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
}

/// Formats seconds since the Unix epoch; a time outside jiff's range is the epoch itself.
pub fn format(secs: i64) -> String {
    checked_format(secs).unwrap_or_else(|| "1970-01-01T00:00:00Z".into())
}

/// Seconds since the Unix epoch of an RFC 3339 timestamp (any offset, any fraction, which is
/// dropped), or `None` if it is not one.
pub fn parse(s: &str) -> Option<i64> {
    s.parse::<jiff::Timestamp>().ok().map(|t| t.as_second())
}

/// Milliseconds since the Unix epoch of an RFC 3339 timestamp, or `None` if it is not one or is
/// before the epoch.
pub fn parse_ms(s: &str) -> Option<u64> {
    let t = s.parse::<jiff::Timestamp>().ok()?;
    u64::try_from(t.as_millisecond()).ok()
}

/// Nanoseconds since the Unix epoch of an RFC 3339 timestamp (any offset, the fraction kept, as
/// containerd writes log records), or `None` if it is not one or falls outside `i64`'s range.
pub fn parse_nanos(s: &str) -> Option<i64> {
    let t = s.parse::<jiff::Timestamp>().ok()?;
    i64::try_from(t.as_nanosecond()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_like_kubernetes() {
        assert_eq!(format(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(format(1_795_000_000), "2026-11-18T11:06:40Z");
        assert_eq!(format(0), "1970-01-01T00:00:00Z");
        assert_eq!(checked_format(i64::MAX), None);
        assert_eq!(
            parse_nanos("2023-11-14T22:13:20.000000042Z"),
            Some(1_700_000_000_000_000_042)
        );
        assert_eq!(parse_nanos("stdout"), None);
        assert_eq!(format(i64::MAX), "1970-01-01T00:00:00Z");
    }

    #[test]
    fn parses_any_rfc3339_form() {
        assert_eq!(parse("2023-11-14T22:13:20Z"), Some(1_700_000_000));
        assert_eq!(parse("2023-11-14T23:13:20.75+01:00"), Some(1_700_000_000));
        assert_eq!(parse_ms("2023-11-14T22:13:20.75Z"), Some(1_700_000_000_750));
        assert_eq!(parse_ms("1969-12-31T23:59:59Z"), None);
        assert_eq!(parse("yesterday"), None);
        assert_eq!(parse(&format(1_234_567_890)), Some(1_234_567_890));
    }
}
