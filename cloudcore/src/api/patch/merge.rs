//! JSON merge patch (RFC 7396, `application/merge-patch+json`, `kubectl patch --type=merge`):
//! objects merge key by key, `null` deletes a key, anything else (lists included) replaces.
//!
//! The algorithm is the `json-patch` crate's; it needs no schema and cannot fail, so a merge
//! patch that is not a JSON object is rejected by the handlers before it gets here.

use serde_json::Value;

/// Merges `patch` into `target` in place.
pub fn apply(target: &mut Value, patch: &Value) {
    json_patch::merge(target, patch);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_patch_rfc7396() {
        let mut t = json!({"a": "b", "c": {"d": "e", "f": "g"}, "l": [1, 2]});
        apply(
            &mut t,
            &json!({"a": "z", "c": {"f": null}, "l": [3], "n": {"x": 1}}),
        );
        assert_eq!(
            t,
            json!({"a": "z", "c": {"d": "e"}, "l": [3], "n": {"x": 1}})
        );
        // RFC 7396 appendix A: a non-object target becomes an object; a non-object patch
        // replaces; `null` inside a new object is dropped.
        let mut t = json!(["a"]);
        apply(&mut t, &json!({"a": "b", "c": {"d": null}}));
        assert_eq!(t, json!({"a": "b", "c": {}}));
        let mut t = json!({"a": "foo"});
        apply(&mut t, &json!(["c"]));
        assert_eq!(t, json!(["c"]));
    }
}
