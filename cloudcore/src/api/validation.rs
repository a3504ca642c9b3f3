//! Name and metadata rules shared by every resource (DNS-1123 labels and subdomains, label keys
//! and values), with Kubernetes' wording so that error messages look familiar.

use super::error::FieldError;
use serde_json::{Map, Value};

const DNS1123_LABEL_MAX: usize = 63;
const DNS1123_SUBDOMAIN_MAX: usize = 253;
const QUALIFIED_NAME_MAX: usize = 63;
const LABEL_VALUE_MAX: usize = 63;
/// Kubernetes' limit on the total size of all annotations of one object.
const ANNOTATIONS_MAX_BYTES: usize = 256 * 1024;

const LABEL_FMT: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')";
const DNS1035_LABEL_FMT: &str = "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')";
const SUBDOMAIN_FMT: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";
const QUALIFIED_FMT: &str = "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')";
const CONFIG_KEY_MAX: usize = 253;
const CONFIG_KEY_FMT: &str = "a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation is '[-._a-zA-Z0-9]+')";
const LABEL_VALUE_FMT: &str = "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')";

/// Which rule an object's name must follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameRule {
    /// RFC 1123 subdomain (pods, nodes, most resources).
    Subdomain,
    /// RFC 1123 label (namespaces).
    Label,
    /// RFC 1035 label: an RFC 1123 label that starts with a letter (services, whose names
    /// become DNS names and environment variable prefixes).
    Dns1035Label,
}

impl NameRule {
    /// The problems with `name` under this rule (empty if valid).
    pub fn check(self, name: &str) -> Vec<String> {
        match self {
            NameRule::Subdomain => dns1123_subdomain(name),
            NameRule::Label => dns1123_label(name),
            NameRule::Dns1035Label => dns1035_label(name),
        }
    }

    /// The longest name this rule allows.
    pub fn max_len(self) -> usize {
        match self {
            NameRule::Subdomain => DNS1123_SUBDOMAIN_MAX,
            NameRule::Label | NameRule::Dns1035Label => DNS1123_LABEL_MAX,
        }
    }
}

fn is_label_body(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// Problems with `s` as an RFC 1123 label (container names, namespaces); empty if valid.
pub fn dns1123_label(s: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if s.len() > DNS1123_LABEL_MAX {
        errs.push(format!(
            "must be no more than {DNS1123_LABEL_MAX} characters"
        ));
    }
    if !is_label_body(s) {
        errs.push(LABEL_FMT.to_string());
    }
    errs
}

/// Problems with `s` as an RFC 1035 label (service names); empty if valid.
pub fn dns1035_label(s: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if s.len() > DNS1123_LABEL_MAX {
        errs.push(format!(
            "must be no more than {DNS1123_LABEL_MAX} characters"
        ));
    }
    if !is_label_body(s) || !s.starts_with(|c: char| c.is_ascii_lowercase()) {
        errs.push(DNS1035_LABEL_FMT.to_string());
    }
    errs
}

/// Problems with `s` as an RFC 1123 subdomain (pod and node names); empty if valid.
pub fn dns1123_subdomain(s: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if s.len() > DNS1123_SUBDOMAIN_MAX {
        errs.push(format!(
            "must be no more than {DNS1123_SUBDOMAIN_MAX} characters"
        ));
    }
    if !s.split('.').all(is_label_body) {
        errs.push(SUBDOMAIN_FMT.to_string());
    }
    errs
}

fn is_qualified_part(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
}

/// Problems with `s` as a qualified name (`example.com/name` or `name`): label and annotation
/// keys, taint keys.
pub fn qualified_name(s: &str) -> Vec<String> {
    let mut errs = Vec::new();
    let (prefix, name) = match s.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, s),
    };
    if let Some(prefix) = prefix {
        if prefix.is_empty() {
            errs.push("prefix part must be non-empty".to_string());
        } else {
            errs.extend(
                dns1123_subdomain(prefix)
                    .into_iter()
                    .map(|e| format!("prefix part {e}")),
            );
        }
    }
    if name.is_empty() {
        errs.push("name part must be non-empty".to_string());
    } else {
        if name.len() > QUALIFIED_NAME_MAX {
            errs.push(format!(
                "name part must be no more than {QUALIFIED_NAME_MAX} characters"
            ));
        }
        if !is_qualified_part(name) {
            errs.push(QUALIFIED_FMT.to_string());
        }
    }
    errs
}

/// Problems with `s` as a label value; empty if valid.
pub fn label_value(s: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if s.len() > LABEL_VALUE_MAX {
        errs.push(format!("must be no more than {LABEL_VALUE_MAX} characters"));
    }
    if !s.is_empty() && !is_qualified_part(s) {
        errs.push(LABEL_VALUE_FMT.to_string());
    }
    errs
}

/// Problems with `s` as a key of a ConfigMap or Secret (`[-._a-zA-Z0-9]+`, at most 253
/// characters, not `.` or `..` nor starting with `..`): keys become file names in volumes, so
/// they must not walk out of the volume directory. Empty if valid.
pub fn config_key(s: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if s.len() > CONFIG_KEY_MAX {
        errs.push(format!("must be no more than {CONFIG_KEY_MAX} characters"));
    }
    if s.is_empty()
        || !s
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
    {
        errs.push(CONFIG_KEY_FMT.to_string());
    }
    if s == "." {
        errs.push("must not be '.'".to_string());
    } else if s == ".." {
        errs.push("must not be '..'".to_string());
    } else if s.starts_with("..") {
        errs.push("must not start with '..'".to_string());
    }
    errs
}

/// `Ok` when validation found nothing, else the errors: what every handler's validate returns.
pub fn errors_to_result(errs: Vec<FieldError>) -> Result<(), Vec<FieldError>> {
    if errs.is_empty() {
        Ok(())
    } else {
        Err(errs)
    }
}

/// Pushes one `Invalid` error per problem.
pub fn push_invalid(errs: &mut Vec<FieldError>, field: &str, value: &str, problems: Vec<String>) {
    for p in problems {
        errs.push(FieldError::invalid(
            field,
            &Value::String(value.to_string()),
            p,
        ));
    }
}

/// Validates the metadata every object shares: name, namespace, labels, annotations.
pub fn validate_object_meta(obj: &Value, name_rule: NameRule, namespaced: bool) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let empty = Map::new();
    let meta = obj
        .get("metadata")
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    let name = meta.get("name").and_then(Value::as_str).unwrap_or("");
    if name.is_empty() {
        errs.push(FieldError::required(
            "metadata.name",
            "name or generateName is required",
        ));
    } else {
        push_invalid(&mut errs, "metadata.name", name, name_rule.check(name));
    }
    let ns = meta.get("namespace").and_then(Value::as_str).unwrap_or("");
    if namespaced {
        if ns.is_empty() {
            errs.push(FieldError::required("metadata.namespace", ""));
        } else {
            push_invalid(&mut errs, "metadata.namespace", ns, dns1123_label(ns));
        }
    } else if !ns.is_empty() {
        errs.push(FieldError::forbidden(
            "metadata.namespace",
            "not allowed on this type",
        ));
    }
    if let Some(labels) = meta.get("labels").and_then(Value::as_object) {
        for (k, v) in labels {
            push_invalid(&mut errs, "metadata.labels", k, qualified_name(k));
            let v = v.as_str().unwrap_or("");
            push_invalid(
                &mut errs,
                &format!("metadata.labels[{k}]"),
                v,
                label_value(v),
            );
        }
    }
    if let Some(annotations) = meta.get("annotations").and_then(Value::as_object) {
        let mut total = 0;
        for (k, v) in annotations {
            push_invalid(&mut errs, "metadata.annotations", k, qualified_name(k));
            total += k.len() + v.as_str().map_or(0, str::len);
        }
        if total > ANNOTATIONS_MAX_BYTES {
            errs.push(FieldError::forbidden(
                "metadata.annotations",
                format!("Too long: must have at most {ANNOTATIONS_MAX_BYTES} bytes"),
            ));
        }
    }
    errs
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn dns_names() {
        assert!(dns1123_label("my-name-1").is_empty());
        assert!(!dns1123_label("My-name").is_empty());
        assert!(!dns1123_label("-a").is_empty());
        assert!(!dns1123_label("a.b").is_empty());
        assert!(!dns1123_label("").is_empty());
        assert!(!dns1123_label(&"a".repeat(64)).is_empty());
        assert!(dns1035_label("web-1").is_empty());
        assert!(!dns1035_label("1web").is_empty());
        assert!(!dns1035_label("web-").is_empty());
        assert!(dns1123_subdomain("a.b-c.d").is_empty());
        assert!(!dns1123_subdomain("a..b").is_empty());
        assert!(!dns1123_subdomain("a.-b").is_empty());
        assert!(!dns1123_subdomain("a_b").is_empty());
        assert!(!dns1123_subdomain(&"a".repeat(254)).is_empty());
    }

    #[test]
    fn qualified_names_and_values() {
        assert!(qualified_name("app").is_empty());
        assert!(qualified_name("app.kubernetes.io/name").is_empty());
        assert!(qualified_name("Under_score.x").is_empty());
        assert!(!qualified_name("/x").is_empty());
        assert!(!qualified_name("a/").is_empty());
        assert!(!qualified_name("Bad_Prefix/x").is_empty());
        assert!(!qualified_name("a/b/c").is_empty());
        assert!(label_value("").is_empty());
        assert!(label_value("v1.2_3").is_empty());
        assert!(!label_value("-x").is_empty());
        assert!(!label_value("a b").is_empty());
    }

    #[test]
    fn config_keys() {
        for ok in [
            "a",
            "KEY_NAME",
            "key.name",
            "key-name",
            ".hidden",
            "a..b",
            &"k".repeat(253),
        ] {
            assert!(config_key(ok).is_empty(), "{ok}");
        }
        for bad in ["", ".", "..", "..a", "a/b", "a b", "ä", &"k".repeat(254)] {
            assert!(!config_key(bad).is_empty(), "{bad}");
        }
        assert_eq!(config_key(".."), ["must not be '..'"]);
    }

    #[test]
    fn object_meta() {
        let errs = validate_object_meta(
            &json!({"metadata": {"name": "Bad", "labels": {"ok": "-no"}}}),
            NameRule::Subdomain,
            true,
        );
        let fields: Vec<&str> = errs.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            ["metadata.name", "metadata.namespace", "metadata.labels[ok]"]
        );
        let errs = validate_object_meta(
            &json!({"metadata": {"name": "n", "namespace": "x"}}),
            NameRule::Subdomain,
            false,
        );
        assert_eq!(errs.len(), 1);
        assert!(validate_object_meta(
            &json!({"metadata": {"name": "n", "namespace": "x"}}),
            NameRule::Subdomain,
            true
        )
        .is_empty());
    }
}
