//! The downward API: fields of a pod that its containers read about themselves, as
//! `downwardAPI` volume files (and `projected` volumes' downwardAPI sources) and as env
//! `fieldRef`s. Which paths exist, what each resolves to and how the files are written follow
//! kubelet (`pkg/fieldpath`): a label or annotation map is one `key="value"` line per entry,
//! sorted, values quoted as Go's `%q` quotes them.
//!
//! Pure, so that the API (which refuses a path the edge cannot resolve, with a 422), the
//! projection (which carries only the annotations a pod refers to) and the edge (which writes
//! the files, and rewrites them when the pod's labels or annotations change) agree.

use crate::pod::EdgePod;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// A pod field a downwardAPI volume file can hold (`fieldRef.fieldPath`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PodField {
    /// `metadata.name`.
    Name,
    /// `metadata.namespace`.
    Namespace,
    /// `metadata.uid`.
    Uid,
    /// `metadata.labels`: every label, one line each.
    Labels,
    /// `metadata.annotations`: every annotation, one line each.
    Annotations,
    /// `metadata.labels['<key>']`: one label's value (empty when absent).
    Label(String),
    /// `metadata.annotations['<key>']`: one annotation's value (empty when absent).
    Annotation(String),
}

/// The paths a volume file may name, as the API's 422 lists them.
pub const VOLUME_PATHS: [&str; 7] = [
    "metadata.annotations",
    "metadata.labels",
    "metadata.name",
    "metadata.namespace",
    "metadata.uid",
    "metadata.annotations['<KEY>']",
    "metadata.labels['<KEY>']",
];

/// The paths an env `fieldRef` may name, as upstream lists them.
pub const ENV_PATHS: [&str; 11] = [
    "metadata.annotations['<KEY>']",
    "metadata.labels['<KEY>']",
    "metadata.name",
    "metadata.namespace",
    "metadata.uid",
    "spec.nodeName",
    "spec.serviceAccountName",
    "status.hostIP",
    "status.hostIPs",
    "status.podIP",
    "status.podIPs",
];

impl PodField {
    /// Parses a volume file's `fieldPath`; `None` for a path a volume cannot hold.
    pub fn parse(path: &str) -> Option<Self> {
        Some(match path {
            "metadata.name" => Self::Name,
            "metadata.namespace" => Self::Namespace,
            "metadata.uid" => Self::Uid,
            "metadata.labels" => Self::Labels,
            "metadata.annotations" => Self::Annotations,
            _ => {
                if let Some(key) = subscript(path, "metadata.labels") {
                    Self::Label(key.to_string())
                } else {
                    Self::Annotation(subscript(path, "metadata.annotations")?.to_string())
                }
            }
        })
    }

    /// The field's value in `pod`, as kubelet writes it into a file.
    pub fn value(&self, pod: &EdgePod) -> String {
        match self {
            Self::Name => pod.name.clone(),
            Self::Namespace => pod.namespace.clone(),
            Self::Uid => pod.uid.clone(),
            Self::Labels => format_map(&pod.labels),
            Self::Annotations => format_map(&pod.annotations),
            Self::Label(k) => pod.labels.get(k).cloned().unwrap_or_default(),
            Self::Annotation(k) => pod.annotations.get(k).cloned().unwrap_or_default(),
        }
    }

    /// The annotation keys the field reads: `None` for all of them, `Some(empty)` for none.
    pub fn annotations_read(&self) -> Option<Vec<&str>> {
        match self {
            Self::Annotations => None,
            Self::Annotation(k) => Some(vec![k.as_str()]),
            _ => Some(Vec::new()),
        }
    }
}

/// Whether `path` is an env `fieldRef` the edge resolves ([`ENV_PATHS`]).
pub fn is_env_path(path: &str) -> bool {
    matches!(
        path,
        "metadata.name"
            | "metadata.namespace"
            | "metadata.uid"
            | "spec.nodeName"
            | "spec.serviceAccountName"
            | "status.hostIP"
            | "status.hostIPs"
            | "status.podIP"
            | "status.podIPs"
    ) || subscript(path, "metadata.labels").is_some()
        || subscript(path, "metadata.annotations").is_some()
}

/// The key of `<prefix>['key']` (or `["key"]`), if `path` is one.
pub fn subscript<'a>(path: &'a str, prefix: &str) -> Option<&'a str> {
    let inner = path
        .strip_prefix(prefix)?
        .strip_prefix('[')?
        .strip_suffix(']')?;
    inner
        .strip_prefix('\'')
        .and_then(|s| s.strip_suffix('\''))
        .or_else(|| inner.strip_prefix('"').and_then(|s| s.strip_suffix('"')))
        .filter(|k| !k.is_empty())
}

/// A label or annotation map as kubelet writes it: `key="value"` lines in key order, joined by
/// newlines (no newline after the last).
pub fn format_map(map: &BTreeMap<String, String>) -> String {
    let mut out = String::new();
    for (i, (k, v)) in map.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        out.push_str(k);
        out.push('=');
        out.push_str(&go_quote(v));
    }
    out
}

/// `s` quoted as Go's `strconv.Quote` quotes it: in double quotes, with `"` and `\` escaped,
/// the usual escapes for control characters and `\x..`/`\u....` for the others; printable
/// Unicode stays as it is.
pub fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{7}' => out.push_str("\\a"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{b}' => out.push_str("\\v"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn volume_paths_parse_as_upstream_spells_them() {
        assert_eq!(PodField::parse("metadata.name"), Some(PodField::Name));
        assert_eq!(PodField::parse("metadata.labels"), Some(PodField::Labels));
        assert_eq!(
            PodField::parse("metadata.labels['app']"),
            Some(PodField::Label("app".into()))
        );
        assert_eq!(
            PodField::parse("metadata.annotations[\"a/b\"]"),
            Some(PodField::Annotation("a/b".into()))
        );
        for bad in [
            "spec.nodeName",
            "status.podIP",
            "metadata.labels[]",
            "metadata.labels['x'",
            "metadata.generation",
        ] {
            assert_eq!(PodField::parse(bad), None, "{bad}");
        }
        assert!(is_env_path("status.podIPs") && is_env_path("metadata.annotations['k']"));
        assert!(!is_env_path("metadata.labels") && !is_env_path("spec.schedulerName"));
    }

    #[test]
    fn maps_are_written_as_kubelet_writes_them() {
        let map = BTreeMap::from([
            ("zone".to_string(), "north".to_string()),
            ("app".to_string(), "web \"v2\"\nline".to_string()),
        ]);
        assert_eq!(
            format_map(&map),
            "app=\"web \\\"v2\\\"\\nline\"\nzone=\"north\""
        );
        assert_eq!(format_map(&BTreeMap::new()), "");
        assert_eq!(go_quote("é\u{1}\\"), "\"é\\x01\\\\\"");
    }

    #[test]
    fn values_come_from_the_pod() {
        let mut pod = crate::pod::tests::sample_pod("web");
        pod.annotations = BTreeMap::from([("team".to_string(), "rail".to_string())]);
        assert_eq!(PodField::Name.value(&pod), "web");
        assert_eq!(PodField::Label("app".into()).value(&pod), "demo");
        assert_eq!(PodField::Label("none".into()).value(&pod), "");
        assert_eq!(PodField::Annotations.value(&pod), "team=\"rail\"");
        assert_eq!(PodField::Annotations.annotations_read(), None);
        assert_eq!(
            PodField::Annotation("team".into()).annotations_read(),
            Some(vec!["team"])
        );
        assert_eq!(PodField::Uid.annotations_read(), Some(vec![]));
    }

    proptest! {
        /// Every line of a formatted map is one entry: quoting leaves no raw newline.
        #[test]
        fn one_line_per_entry(map in proptest::collection::btree_map("[a-z]{1,8}", "\\PC{0,16}|[\n\r\t\"\\\\]{0,4}", 0..8)) {
            let text = format_map(&map);
            let lines = if text.is_empty() { 0 } else { text.split('\n').count() };
            prop_assert_eq!(lines, map.len());
        }
    }
}
