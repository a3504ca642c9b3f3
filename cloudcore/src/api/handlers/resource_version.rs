//! What a read's `resourceVersion` and `continue` parameters mean, checked before the read, with
//! kube-apiserver's answers for the ones it refuses:
//!
//! - an unparsable `resourceVersion` is a 400 `BadRequest` ("invalid resource version: ..."), as
//!   the etcd3 storage answers (`ParseResourceVersion` fails with a field error on
//!   `resourceVersion`, which the store wraps in `errors.NewBadRequest`);
//! - `""` and `"0"` ask for no particular version;
//! - a `resourceVersion` newer than any this server has issued is waited for, as the watch cache
//!   waits for freshness (`waitUntilFreshAndBlock`, 3 s); if it does not arrive, the answer is
//!   the 504 `Timeout` of `storage.NewTooLargeResourceVersionError` (for a watch: the same Status
//!   as the stream's single ERROR event). Serving an older state instead would break the promise
//!   of `resourceVersion` (a state at least that new), and silently starting a watch there would
//!   skip every event in between;
//! - a `continue` token that does not decode is a 400 ("invalid continue token: continue key is
//!   not valid: ..."), one sent with a `resourceVersion` a 400 too. This server answers every list
//!   in one page and so never issues tokens: a well-formed token (another server's) cannot be
//!   continued consistently and gets the 410 `Expired` kube-apiserver gives a compacted one, on
//!   which client-go's pager falls back to a full list.

use super::request::Call;
use crate::api::error::{ApiError, FieldError};
use crate::api::ApiState;
use base64::Engine as _;
use serde_json::{json, Value};
use std::time::Duration;

/// How long a read waits for a `resourceVersion` the server has not reached yet (the watch
/// cache's `blockTimeout`).
pub(in crate::api) const FRESHNESS_WAIT: Duration = Duration::from_secs(3);

/// The only continue-token version Kubernetes (and so any client holding a token) knows.
const CONTINUE_VERSION: &str = "meta.k8s.io/v1";

/// Parses a `resourceVersion` parameter: `None` for "any" (`""`, `"0"`, absent).
pub(in crate::api) fn parse(raw: Option<&str>) -> Result<Option<u64>, ApiError> {
    let raw = match raw {
        None | Some("" | "0") => return Ok(None),
        Some(raw) => raw,
    };
    raw.parse::<u64>().map(Some).map_err(|e| {
        let why = match e.kind() {
            std::num::IntErrorKind::PosOverflow => "value out of range",
            _ => "invalid syntax",
        };
        let field = FieldError::invalid(
            "resourceVersion",
            &json!(raw),
            format!("parsing {}: {why}", json!(raw)),
        );
        ApiError::bad_request(format!("invalid resource version: {field}"))
    })
}

/// Waits (at most [`FRESHNESS_WAIT`]) until the server has reached revision `wanted`; a 504
/// "Too large resource version" if it does not. Reached means committed in the store (what a
/// get or list reads) or seen by the watch history; every write the store commits later
/// reaches the history, whose head is what the wait wakes on.
pub(in crate::api) async fn wait_fresh(state: &ApiState, wanted: u64) -> Result<(), ApiError> {
    let current = || state.store.revision().max(state.history.head());
    let mut head = state.history.subscribe();
    let deadline = tokio::time::Instant::now() + FRESHNESS_WAIT;
    while current() < wanted {
        match tokio::time::timeout_at(deadline, head.changed()).await {
            Ok(Ok(())) => continue,
            // Out of time, or the history is gone (the server is stopping).
            _ => {
                if current() >= wanted {
                    break;
                }
                return Err(ApiError::TooLargeResourceVersion {
                    requested: wanted,
                    current: current(),
                });
            }
        }
    }
    Ok(())
}

/// Why a `continue` token is not one this server can use, in Kubernetes' words.
fn invalid_continue(problem: impl std::fmt::Display) -> ApiError {
    ApiError::bad_request(format!(
        "invalid continue token: continue key is not valid: {problem}"
    ))
}

/// Checks a list's `continue` token (see the module comment for what is refused and why).
fn check_continue(token: &str, resource_version: Option<&str>) -> Result<(), ApiError> {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .map_err(invalid_continue)?;
    let decoded: Value = serde_json::from_slice(&bytes).map_err(invalid_continue)?;
    let field = |name: &str| decoded.get(name);
    if field("v").and_then(Value::as_str) != Some(CONTINUE_VERSION) {
        return Err(invalid_continue(
            "server does not recognize this encoded version",
        ));
    }
    if field("rv").and_then(Value::as_i64).unwrap_or(0) == 0 {
        return Err(invalid_continue(format!(
            "incorrect encoded start resourceVersion (version {CONTINUE_VERSION})"
        )));
    }
    if field("start")
        .and_then(Value::as_str)
        .unwrap_or("")
        .is_empty()
    {
        return Err(invalid_continue(format!(
            "encoded start key empty (version {CONTINUE_VERSION})"
        )));
    }
    if !matches!(resource_version, None | Some("" | "0")) {
        return Err(ApiError::bad_request(
            "specifying resource version is not allowed when using continue",
        ));
    }
    Err(ApiError::ResourceExpired(
        "The provided continue parameter is too old to display a consistent list result. \
         You can start a new list without the continue parameter."
            .into(),
    ))
}

impl Call {
    /// The `resourceVersion` of a get or list, checked, and waited for if the server has not
    /// reached it yet.
    pub(super) async fn read_resource_version(&self) -> Result<Option<u64>, ApiError> {
        let wanted = parse(self.query.get("resourceVersion").map(String::as_str))?;
        if let Some(rv) = wanted {
            wait_fresh(&self.state, rv).await?;
        }
        Ok(wanted)
    }

    /// Checks a list's `continue` parameter (any token is refused: see the module comment).
    pub(super) fn check_continue(&self) -> Result<(), ApiError> {
        match self.query.get("continue").filter(|t| !t.is_empty()) {
            Some(token) => {
                check_continue(token, self.query.get("resourceVersion").map(String::as_str))
            }
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(v: Value) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    }

    #[test]
    fn resource_versions_parse_as_kubernetes_parses_them() {
        assert_eq!(parse(None).unwrap(), None);
        assert_eq!(parse(Some("")).unwrap(), None);
        assert_eq!(parse(Some("0")).unwrap(), None);
        assert_eq!(parse(Some("42")).unwrap(), Some(42));
        let e = parse(Some("abc")).unwrap_err();
        assert_eq!(e.code(), 400);
        assert_eq!(
            e.to_string(),
            r#"invalid resource version: resourceVersion: Invalid value: "abc": parsing "abc": invalid syntax"#
        );
        let e = parse(Some("99999999999999999999999")).unwrap_err();
        assert!(e.to_string().contains("value out of range"), "{e}");
        assert_eq!(parse(Some("-1")).unwrap_err().code(), 400);
    }

    #[test]
    fn continue_tokens_are_checked_then_refused_as_expired() {
        let msg = |t: &str, rv: Option<&str>| check_continue(t, rv).unwrap_err();
        let e = msg("%%%", None);
        assert_eq!(e.code(), 400);
        assert!(
            e.to_string()
                .starts_with("invalid continue token: continue key is not valid: "),
            "{e}"
        );
        let e = msg(
            &token(json!({"v": "v1alpha1", "rv": 3, "start": "a"})),
            None,
        );
        assert!(e
            .to_string()
            .ends_with("server does not recognize this encoded version"));
        let e = msg(
            &token(json!({"v": CONTINUE_VERSION, "rv": 0, "start": "a"})),
            None,
        );
        assert!(e
            .to_string()
            .contains("incorrect encoded start resourceVersion"));
        let e = msg(&token(json!({"v": CONTINUE_VERSION, "rv": 3})), None);
        assert!(e.to_string().contains("encoded start key empty"));
        let good = token(json!({"v": CONTINUE_VERSION, "rv": 3, "start": "a"}));
        let e = msg(&good, Some("5"));
        assert_eq!(e.code(), 400);
        assert_eq!(
            e.to_string(),
            "specifying resource version is not allowed when using continue"
        );
        let e = msg(&good, Some("0"));
        assert_eq!(e.code(), 410);
        assert_eq!(e.reason(), "Expired");
    }
}
