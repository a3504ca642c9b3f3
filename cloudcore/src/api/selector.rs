//! Label and field selectors (`?labelSelector=app=web,tier in (a,b)` and
//! `?fieldSelector=spec.nodeName=n1`), parsed with Kubernetes' grammar and semantics.
//!
//! Semantics worth remembering: `a!=b` and `a notin (b)` also match objects *without* label `a`,
//! as in Kubernetes; a missing field compares as the empty string, so `spec.nodeName=` selects
//! unbound pods (which is how schedulers find work).

use super::validation::{label_value, qualified_name};
use serde_json::Value;
use std::collections::BTreeSet;

/// A selector that cannot be parsed, saying which part is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unable to parse {what} {input:?}: {problem}")]
pub struct SelectorError {
    /// `label selector` or `field selector`.
    pub what: &'static str,
    /// The whole selector.
    pub input: String,
    /// The problem, naming the offending part.
    pub problem: String,
}

/// One operator of a label requirement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LabelOp {
    /// `key=value`, `key==value`.
    Equals(String),
    /// `key!=value` (also matches objects without the label).
    NotEquals(String),
    /// `key in (a,b)`.
    In(BTreeSet<String>),
    /// `key notin (a,b)` (also matches objects without the label).
    NotIn(BTreeSet<String>),
    /// `key`.
    Exists,
    /// `!key`.
    DoesNotExist,
    /// `key>5` (integer comparison; the label must exist and be an integer).
    GreaterThan(i64),
    /// `key<5`.
    LessThan(i64),
}

/// One requirement of a label selector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelRequirement {
    /// Label key.
    pub key: String,
    /// What the value must satisfy.
    pub op: LabelOp,
}

impl LabelRequirement {
    /// Whether the label value found under the key (or its absence) satisfies the requirement.
    pub fn matches_value(&self, value: Option<&str>) -> bool {
        match (&self.op, value) {
            (LabelOp::Equals(v), Some(x)) => v == x,
            (LabelOp::Equals(_), None) => false,
            (LabelOp::NotEquals(v), Some(x)) => v != x,
            (LabelOp::NotEquals(_), None) => true,
            (LabelOp::In(set), Some(x)) => set.contains(x),
            (LabelOp::In(_), None) => false,
            (LabelOp::NotIn(set), Some(x)) => !set.contains(x),
            (LabelOp::NotIn(_), None) => true,
            (LabelOp::Exists, v) => v.is_some(),
            (LabelOp::DoesNotExist, v) => v.is_none(),
            (LabelOp::GreaterThan(n), Some(x)) => x.parse::<i64>().is_ok_and(|x| x > *n),
            (LabelOp::LessThan(n), Some(x)) => x.parse::<i64>().is_ok_and(|x| x < *n),
            (LabelOp::GreaterThan(_) | LabelOp::LessThan(_), None) => false,
        }
    }
}

/// A parsed label selector: all requirements must hold (an empty selector matches everything).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelSelector {
    /// The requirements, in the order given.
    pub requirements: Vec<LabelRequirement>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Ident(String),
    Eq,
    DoubleEq,
    NotEq,
    Bang,
    Open,
    Close,
    Comma,
    Gt,
    Lt,
    In,
    NotIn,
}

impl Token {
    fn describe(&self) -> String {
        match self {
            Token::Ident(s) => format!("identifier {s:?}"),
            Token::Eq => "'='".into(),
            Token::DoubleEq => "'=='".into(),
            Token::NotEq => "'!='".into(),
            Token::Bang => "'!'".into(),
            Token::Open => "'('".into(),
            Token::Close => "')'".into(),
            Token::Comma => "','".into(),
            Token::Gt => "'>'".into(),
            Token::Lt => "'<'".into(),
            Token::In => "'in'".into(),
            Token::NotIn => "'notin'".into(),
        }
    }
}

fn is_special(c: char) -> bool {
    matches!(c, '=' | '!' | '(' | ')' | ',' | '<' | '>')
}

fn lex(s: &str) -> Vec<Token> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
            continue;
        }
        chars.next();
        let tok = match c {
            '=' if chars.peek() == Some(&'=') => {
                chars.next();
                Token::DoubleEq
            }
            '=' => Token::Eq,
            '!' if chars.peek() == Some(&'=') => {
                chars.next();
                Token::NotEq
            }
            '!' => Token::Bang,
            '(' => Token::Open,
            ')' => Token::Close,
            ',' => Token::Comma,
            '>' => Token::Gt,
            '<' => Token::Lt,
            _ => {
                let mut ident = String::from(c);
                while let Some(&n) = chars.peek() {
                    if n.is_whitespace() || is_special(n) {
                        break;
                    }
                    ident.push(n);
                    chars.next();
                }
                match ident.as_str() {
                    "in" => Token::In,
                    "notin" => Token::NotIn,
                    _ => Token::Ident(ident),
                }
            }
        };
        out.push(tok);
    }
    out
}

struct Parser {
    tokens: Vec<Token>,
    pos: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.pos)
    }

    fn next(&mut self) -> Option<Token> {
        let t = self.tokens.get(self.pos).cloned();
        self.pos += 1;
        t
    }

    fn found(t: Option<&Token>) -> String {
        t.map_or_else(|| "end of input".to_string(), Token::describe)
    }

    fn key(&mut self) -> Result<String, String> {
        match self.next() {
            Some(Token::Ident(k)) => {
                let errs = qualified_name(&k);
                if errs.is_empty() {
                    Ok(k)
                } else {
                    Err(format!("invalid label key {k:?}: {}", errs.join("; ")))
                }
            }
            other => Err(format!(
                "found {}, expected: label key",
                Self::found(other.as_ref())
            )),
        }
    }

    fn value(&mut self, key: &str) -> Result<String, String> {
        // An empty value (`a=` followed by `,` or the end) is allowed, as in Kubernetes.
        let v = match self.peek() {
            Some(Token::Ident(_)) => match self.next() {
                Some(Token::Ident(v)) => v,
                _ => String::new(),
            },
            Some(Token::Comma | Token::Close) | None => String::new(),
            other => {
                return Err(format!(
                    "found {} after {key:?}, expected: label value",
                    Self::found(other)
                ))
            }
        };
        let errs = label_value(&v);
        if errs.is_empty() {
            Ok(v)
        } else {
            Err(format!(
                "invalid label value {v:?} for {key:?}: {}",
                errs.join("; ")
            ))
        }
    }

    fn set(&mut self, key: &str) -> Result<BTreeSet<String>, String> {
        match self.next() {
            Some(Token::Open) => {}
            other => {
                return Err(format!(
                    "found {} after {key:?} in/notin, expected: '('",
                    Self::found(other.as_ref())
                ))
            }
        }
        let mut set = BTreeSet::new();
        loop {
            set.insert(self.value(key)?);
            match self.next() {
                Some(Token::Comma) => continue,
                Some(Token::Close) => return Ok(set),
                other => {
                    return Err(format!(
                        "found {} in the value set of {key:?}, expected: ',' or ')'",
                        Self::found(other.as_ref())
                    ))
                }
            }
        }
    }

    fn integer(&mut self, key: &str) -> Result<i64, String> {
        match self.next() {
            Some(Token::Ident(v)) => v
                .parse()
                .map_err(|_| format!("value {v:?} for {key:?} must be an integer for '<' and '>'")),
            other => Err(format!(
                "found {} after {key:?}, expected: integer",
                Self::found(other.as_ref())
            )),
        }
    }

    fn requirement(&mut self) -> Result<LabelRequirement, String> {
        if self.peek() == Some(&Token::Bang) {
            self.next();
            let key = self.key()?;
            return Ok(LabelRequirement {
                key,
                op: LabelOp::DoesNotExist,
            });
        }
        let key = self.key()?;
        let op = match self.peek() {
            None | Some(Token::Comma) => LabelOp::Exists,
            Some(Token::Eq | Token::DoubleEq) => {
                self.next();
                LabelOp::Equals(self.value(&key)?)
            }
            Some(Token::NotEq) => {
                self.next();
                LabelOp::NotEquals(self.value(&key)?)
            }
            Some(Token::In) => {
                self.next();
                LabelOp::In(self.set(&key)?)
            }
            Some(Token::NotIn) => {
                self.next();
                LabelOp::NotIn(self.set(&key)?)
            }
            Some(Token::Gt) => {
                self.next();
                LabelOp::GreaterThan(self.integer(&key)?)
            }
            Some(Token::Lt) => {
                self.next();
                LabelOp::LessThan(self.integer(&key)?)
            }
            Some(other) => {
                return Err(format!(
                    "found {} after {key:?}, expected: one of '=', '==', '!=', 'in', 'notin', '<', '>', ',' or end",
                    other.describe()
                ))
            }
        };
        Ok(LabelRequirement { key, op })
    }
}

impl LabelSelector {
    /// Parses a label selector; the empty string selects everything.
    pub fn parse(input: &str) -> Result<Self, SelectorError> {
        let err = |problem: String| SelectorError {
            what: "label selector",
            input: input.to_string(),
            problem,
        };
        let mut p = Parser {
            tokens: lex(input),
            pos: 0,
        };
        let mut requirements = Vec::new();
        if p.tokens.is_empty() {
            return Ok(Self { requirements });
        }
        loop {
            requirements.push(p.requirement().map_err(err)?);
            match p.next() {
                None => break,
                Some(Token::Comma) => continue,
                Some(t) => return Err(err(format!("found {}, expected: ','", t.describe()))),
            }
        }
        Ok(Self { requirements })
    }

    /// Whether the selector has no requirements (selects everything).
    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }

    /// Converts the structured selector of workload specs (`matchLabels` and
    /// `matchExpressions`, as in `metav1.LabelSelectorAsSelector`). An operator other than
    /// `In`, `NotIn`, `Exists` and `DoesNotExist`, or `In`/`NotIn` without values, is an error
    /// naming the field (`matchExpressions[0].operator`).
    pub fn from_meta(
        sel: &k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector,
    ) -> Result<Self, SelectorError> {
        let err = |problem: String| SelectorError {
            what: "label selector",
            input: String::new(),
            problem,
        };
        let mut requirements = Vec::new();
        for (k, v) in sel.match_labels.iter().flatten() {
            requirements.push(LabelRequirement {
                key: k.clone(),
                op: LabelOp::Equals(v.clone()),
            });
        }
        for (i, e) in sel.match_expressions.iter().flatten().enumerate() {
            let values: BTreeSet<String> = e.values.iter().flatten().cloned().collect();
            let op = match e.operator.as_str() {
                "In" | "NotIn" if values.is_empty() => {
                    return Err(err(format!(
                        "matchExpressions[{i}].values: must be specified when `operator` is 'In' or 'NotIn'"
                    )))
                }
                "In" => LabelOp::In(values),
                "NotIn" => LabelOp::NotIn(values),
                "Exists" | "DoesNotExist" if !values.is_empty() => {
                    return Err(err(format!(
                        "matchExpressions[{i}].values: may not be specified when `operator` is 'Exists' or 'DoesNotExist'"
                    )))
                }
                "Exists" => LabelOp::Exists,
                "DoesNotExist" => LabelOp::DoesNotExist,
                other => {
                    return Err(err(format!(
                        "matchExpressions[{i}].operator: Unsupported value: {other:?}: supported values: \"In\", \"NotIn\", \"Exists\", \"DoesNotExist\""
                    )))
                }
            };
            requirements.push(LabelRequirement {
                key: e.key.clone(),
                op,
            });
        }
        Ok(Self { requirements })
    }

    /// Whether the labels looked up through `get` satisfy every requirement.
    pub fn matches_with<'a>(&self, get: impl Fn(&str) -> Option<&'a str>) -> bool {
        self.requirements
            .iter()
            .all(|r| r.matches_value(get(&r.key)))
    }

    /// Whether a label map satisfies every requirement (for pod templates, whose labels are
    /// not at `metadata.labels` of the object being checked).
    pub fn matches_labels(&self, labels: &std::collections::BTreeMap<String, String>) -> bool {
        self.matches_with(|k| labels.get(k).map(String::as_str))
    }

    /// Whether an object's `metadata.labels` satisfy every requirement.
    pub fn matches(&self, obj: &Value) -> bool {
        let labels = obj.pointer("/metadata/labels").and_then(Value::as_object);
        self.matches_with(|k| labels.and_then(|l| l.get(k)).and_then(Value::as_str))
    }

    /// A label key and the values one of which every selected object must carry (the first
    /// `=` or `in` requirement), so that an index by label finds the candidates; `None` when
    /// the selector has no such requirement (every object is a candidate).
    pub fn index_hint(&self) -> Option<(&str, Vec<&str>)> {
        self.requirements.iter().find_map(|r| match &r.op {
            LabelOp::Equals(v) => Some((r.key.as_str(), vec![v.as_str()])),
            LabelOp::In(vs) => Some((r.key.as_str(), vs.iter().map(String::as_str).collect())),
            _ => None,
        })
    }
}

/// One term of a field selector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldRequirement {
    /// Field, e.g. `spec.nodeName`.
    pub field: String,
    /// `true` for `!=`.
    pub negated: bool,
    /// Value compared against.
    pub value: String,
}

/// A parsed field selector: all terms must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldSelector {
    /// The terms, in the order given.
    pub requirements: Vec<FieldRequirement>,
}

/// Splits on `sep` outside backslash escapes.
fn split_unescaped(s: &str, sep: char) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        if escaped {
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else if c == sep {
            out.push(&s[start..i]);
            start = i + c.len_utf8();
        }
    }
    out.push(&s[start..]);
    out
}

/// Unescapes a field selector value as Kubernetes' `fields.UnescapeValue` does: `\\`, `\,` and
/// `\=` are the escapes; any other escape, and an unescaped `=` (or `,`), is an error rather than
/// a literal. Without this, `metadata.name===x` would quietly select objects named `=x` where
/// kube-apiserver answers 400.
fn unescape(s: &str) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some(n @ ('\\' | ',' | '=')) => out.push(n),
                Some(n) => return Err(format!("invalid escape sequence: \\{n}")),
                None => return Err(format!("{s:?} ends with an unfinished escape")),
            },
            '=' | ',' => {
                return Err(format!(
                    "unescaped character in value: {c:?} (escape it as \\{c})"
                ))
            }
            c => out.push(c),
        }
    }
    Ok(out)
}

impl FieldSelector {
    /// Parses `field=value,field!=value` (operators `=`, `==`, `!=`; `\` escapes `\`, `,` and `=`).
    pub fn parse(input: &str) -> Result<Self, SelectorError> {
        let err = |problem: String| SelectorError {
            what: "field selector",
            input: input.to_string(),
            problem,
        };
        let mut requirements = Vec::new();
        if input.trim().is_empty() {
            return Ok(Self { requirements });
        }
        for term in split_unescaped(input, ',') {
            let mut found = None;
            let mut escaped = false;
            for (i, c) in term.char_indices() {
                if escaped {
                    escaped = false;
                    continue;
                }
                match c {
                    '\\' => escaped = true,
                    '!' if term[i..].starts_with("!=") => {
                        found = Some((i, 2, true));
                        break;
                    }
                    '=' if term[i..].starts_with("==") => {
                        found = Some((i, 2, false));
                        break;
                    }
                    '=' => {
                        found = Some((i, 1, false));
                        break;
                    }
                    _ => {}
                }
            }
            let Some((at, len, negated)) = found else {
                return Err(err(format!(
                    "term {term:?} has no operator; expected field=value, field==value or field!=value"
                )));
            };
            let field = term[..at].trim();
            if field.is_empty() {
                return Err(err(format!("term {term:?} has no field name")));
            }
            let value = unescape(&term[at + len..]).map_err(err)?;
            requirements.push(FieldRequirement {
                field: field.to_string(),
                negated,
                value,
            });
        }
        Ok(Self { requirements })
    }

    /// Whether the selector has no terms.
    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }

    /// Checks that every field is one of `supported`; the error names the first that is not.
    pub fn check_fields(&self, supported: &[&str]) -> Result<(), String> {
        for r in &self.requirements {
            if !supported.contains(&r.field.as_str()) {
                return Err(format!(
                    "field label not supported: {} (supported: {})",
                    r.field,
                    supported.join(", ")
                ));
            }
        }
        Ok(())
    }

    /// Whether an object satisfies every term; `value_of` gives a field's value (missing fields
    /// compare as `""`).
    pub fn matches(&self, value_of: impl Fn(&str) -> String) -> bool {
        self.requirements
            .iter()
            .all(|r| (value_of(&r.field) == r.value) != r.negated)
    }
}

impl std::fmt::Display for LabelSelector {
    /// The selector in query syntax (`app=web,tier in (a,b),!legacy`), as `/scale` reports
    /// it in `status.selector` and as it can be passed back as `?labelSelector=`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let set = |s: &BTreeSet<String>| s.iter().cloned().collect::<Vec<_>>().join(",");
        for (i, r) in self.requirements.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            let k = &r.key;
            match &r.op {
                LabelOp::Equals(v) => write!(f, "{k}={v}")?,
                LabelOp::NotEquals(v) => write!(f, "{k}!={v}")?,
                LabelOp::In(s) => write!(f, "{k} in ({})", set(s))?,
                LabelOp::NotIn(s) => write!(f, "{k} notin ({})", set(s))?,
                LabelOp::Exists => write!(f, "{k}")?,
                LabelOp::DoesNotExist => write!(f, "!{k}")?,
                LabelOp::GreaterThan(n) => write!(f, "{k}>{n}")?,
                LabelOp::LessThan(n) => write!(f, "{k}<{n}")?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn labels(l: Value) -> Value {
        json!({"metadata": {"labels": l}})
    }

    #[test]
    fn parses_all_label_operators() {
        let s =
            LabelSelector::parse("a=b, c==d,e!=f,g in (x, y),h notin (z),i,!j,k>5,l<3").unwrap();
        let ops: Vec<&LabelOp> = s.requirements.iter().map(|r| &r.op).collect();
        assert_eq!(ops[0], &LabelOp::Equals("b".into()));
        assert_eq!(ops[1], &LabelOp::Equals("d".into()));
        assert_eq!(ops[2], &LabelOp::NotEquals("f".into()));
        assert_eq!(
            ops[3],
            &LabelOp::In(["x".to_string(), "y".to_string()].into())
        );
        assert_eq!(ops[4], &LabelOp::NotIn(["z".to_string()].into()));
        assert_eq!(ops[5], &LabelOp::Exists);
        assert_eq!(ops[6], &LabelOp::DoesNotExist);
        assert_eq!(ops[7], &LabelOp::GreaterThan(5));
        assert_eq!(ops[8], &LabelOp::LessThan(3));
        assert!(LabelSelector::parse("").unwrap().is_empty());
        assert!(LabelSelector::parse("  ").unwrap().is_empty());
        assert_eq!(
            LabelSelector::parse("a=").unwrap().requirements[0].op,
            LabelOp::Equals(String::new())
        );
        assert_eq!(
            LabelSelector::parse("app.kubernetes.io/name=web")
                .unwrap()
                .requirements[0]
                .key,
            "app.kubernetes.io/name"
        );
    }

    #[test]
    fn rejects_malformed_label_selectors_naming_the_part() {
        for (bad, needle) in [
            ("a in (x", "expected: ',' or ')'"),
            ("a in x", "expected: '('"),
            ("a=b=c", "found '='"),
            ("=b", "expected: label key"),
            ("a b", "identifier \"b\""),
            ("a,", "found end of input"),
            ("-bad=x", "invalid label key \"-bad\""),
            ("a=-x", "invalid label value \"-x\""),
            ("a>b", "must be an integer"),
            ("a=(b)", "expected: label value"),
            ("!", "expected: label key"),
        ] {
            let e = LabelSelector::parse(bad).unwrap_err();
            assert!(e.to_string().contains(needle), "{bad:?}: {e}");
            assert!(e.to_string().contains(&format!("{bad:?}")), "{e}");
        }
    }

    #[test]
    fn label_matching() {
        let obj = labels(json!({"app": "web", "tier": "front", "n": "7"}));
        let m = |s: &str| LabelSelector::parse(s).unwrap().matches(&obj);
        assert!(m("app=web"));
        assert!(m("app==web,tier"));
        assert!(!m("app=db"));
        assert!(m("app!=db"));
        assert!(m("missing!=x"), "!= matches objects without the label");
        assert!(m("missing notin (x)"));
        assert!(!m("missing in (x)"));
        assert!(m("tier in (back,front)"));
        assert!(!m("tier notin (front)"));
        assert!(m("!missing"));
        assert!(!m("!app"));
        assert!(m("n>6,n<8"));
        assert!(!m("app>1"));
        assert!(LabelSelector::parse("x!=y").unwrap().matches(&json!({})));
    }

    #[test]
    fn field_selectors() {
        let s = FieldSelector::parse("spec.nodeName=n1,status.phase!=Failed,metadata.name==a\\,b")
            .unwrap();
        assert_eq!(s.requirements.len(), 3);
        assert_eq!(s.requirements[2].value, "a,b");
        assert!(s.requirements[1].negated);
        let get = |f: &str| match f {
            "spec.nodeName" => "n1".to_string(),
            "status.phase" => "Running".to_string(),
            "metadata.name" => "a,b".to_string(),
            _ => String::new(),
        };
        assert!(s.matches(get));
        assert!(!FieldSelector::parse("status.phase=Failed")
            .unwrap()
            .matches(get));
        assert!(FieldSelector::parse("spec.nodeName=")
            .unwrap()
            .matches(|_| String::new()));
        assert!(FieldSelector::parse("").unwrap().is_empty());
        assert!(FieldSelector::parse("spec.nodeName")
            .unwrap_err()
            .to_string()
            .contains("no operator"));
        assert!(FieldSelector::parse("=x")
            .unwrap_err()
            .to_string()
            .contains("no field name"));
        assert!(FieldSelector::parse("a=x\\").is_err());
        // As Kubernetes' fields.UnescapeValue: `===` leaves an unescaped `=` in the value.
        let e = FieldSelector::parse("metadata.name===x").unwrap_err();
        assert!(
            e.to_string().contains("unescaped character in value"),
            "{e}"
        );
        assert!(FieldSelector::parse("a=x\\!").is_err());
        let escaped = FieldSelector::parse("a=x\\=y\\,z\\\\").unwrap();
        assert_eq!(escaped.requirements[0].value, "x=y,z\\");
        let e = s
            .check_fields(&["metadata.name", "spec.nodeName"])
            .unwrap_err();
        assert!(e.contains("field label not supported: status.phase"), "{e}");
    }
}
