//! Resolved parameter values and their canonical encoding.
//!
//! The canonical encoding is what content keys hash: it must never change for
//! an unchanged value, so it is written by hand (tagged, length-prefixed,
//! tables sorted by key) instead of relying on a serializer's formatting.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// A parameter value after profiles and fan-out are applied.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Value {
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    List(Vec<Value>),
    Table(BTreeMap<String, Value>),
}

impl Value {
    /// Appends the canonical encoding of `self` to `out`.
    pub fn encode_canonical(&self, out: &mut Vec<u8>) {
        match self {
            Value::Bool(b) => {
                out.push(b'b');
                out.push(u8::from(*b));
            }
            Value::Int(i) => {
                out.push(b'i');
                out.extend_from_slice(&i.to_le_bytes());
            }
            Value::Float(f) => {
                out.push(b'f');
                // -0.0 and 0.0 mean the same parameter; NaN never passes validation.
                let f = if *f == 0.0 { 0.0 } else { *f };
                out.extend_from_slice(&f.to_bits().to_le_bytes());
            }
            Value::Str(s) => encode_str(b's', s, out),
            Value::List(items) => {
                out.push(b'l');
                out.extend_from_slice(&(items.len() as u64).to_le_bytes());
                for item in items {
                    item.encode_canonical(out);
                }
            }
            Value::Table(map) => {
                out.push(b't');
                out.extend_from_slice(&(map.len() as u64).to_le_bytes());
                for (k, v) in map {
                    encode_str(b'k', k, out);
                    v.encode_canonical(out);
                }
            }
        }
    }

    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Bool(_) => "boolean",
            Value::Int(_) => "integer",
            Value::Float(_) => "float",
            Value::Str(_) => "string",
            Value::List(_) => "array",
            Value::Table(_) => "table",
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            _ => None,
        }
    }

    /// Integers widen to floats: `ratio = 1` means `ratio = 1.0`.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Int(i) => Some(*i as f64),
            Value::Float(f) => Some(*f),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Value::Bool(b) => Some(*b),
            _ => None,
        }
    }

    pub fn as_list(&self) -> Option<&[Value]> {
        match self {
            Value::List(items) => Some(items),
            _ => None,
        }
    }

    pub fn as_table(&self) -> Option<&BTreeMap<String, Value>> {
        match self {
            Value::Table(map) => Some(map),
            _ => None,
        }
    }

    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
    }
}

fn encode_str(tag: u8, s: &str, out: &mut Vec<u8>) {
    out.push(tag);
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

impl Value {
    /// The value as it appears in an instance name (`mix@ratio=0.4`) and hence in a results
    /// folder name. Like [`fmt::Display`], but text is percent-escaped where it holds a
    /// character that structures names (`, = @ [ ] { }`), a path separator (`/ \`), `%`
    /// itself or a control character. Brackets stay balanced, so a name splits into its
    /// bindings one way only: distinct values give distinct names, and no value reaches
    /// outside its folder.
    pub fn name_part(&self) -> String {
        match self {
            Value::Str(s) => escape_name_text(s),
            Value::List(items) => {
                let parts: Vec<String> = items.iter().map(Value::name_part).collect();
                format!("[{}]", parts.join(","))
            }
            Value::Table(map) => {
                let parts: Vec<String> = map
                    .iter()
                    .map(|(k, v)| format!("{}={}", escape_name_text(k), v.name_part()))
                    .collect();
                format!("{{{}}}", parts.join(","))
            }
            scalar => scalar.to_string(),
        }
    }
}

fn escape_name_text(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(
            c,
            '%' | ',' | '=' | '@' | '[' | ']' | '{' | '}' | '/' | '\\'
        ) || c.is_control()
        {
            let mut buf = [0u8; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                out.push_str(&format!("%{b:02X}"));
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Short human form, used in messages.
impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Bool(b) => write!(f, "{b}"),
            Value::Int(i) => write!(f, "{i}"),
            Value::Float(x) => {
                if x.fract() == 0.0 && x.abs() < 1e15 {
                    write!(f, "{x:.1}")
                } else {
                    write!(f, "{x}")
                }
            }
            Value::Str(s) => write!(f, "{s}"),
            Value::List(items) => {
                write!(f, "[")?;
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        write!(f, ",")?;
                    }
                    write!(f, "{item}")?;
                }
                write!(f, "]")
            }
            Value::Table(map) => {
                write!(f, "{{")?;
                for (i, (k, v)) in map.iter().enumerate() {
                    if i > 0 {
                        write!(f, ",")?;
                    }
                    write!(f, "{k}={v}")?;
                }
                write!(f, "}}")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(v: &Value) -> Vec<u8> {
        let mut out = Vec::new();
        v.encode_canonical(&mut out);
        out
    }

    #[test]
    fn encoding_distinguishes_types_and_boundaries() {
        assert_ne!(enc(&Value::Int(1)), enc(&Value::Float(1.0)));
        assert_ne!(enc(&Value::Str("1".into())), enc(&Value::Int(1)));
        let ab_c = Value::List(vec![Value::Str("ab".into()), Value::Str("c".into())]);
        let a_bc = Value::List(vec![Value::Str("a".into()), Value::Str("bc".into())]);
        assert_ne!(enc(&ab_c), enc(&a_bc));
        assert_eq!(enc(&Value::Float(-0.0)), enc(&Value::Float(0.0)));
    }

    #[test]
    fn display_is_short_and_readable() {
        assert_eq!(Value::Float(0.4).to_string(), "0.4");
        assert_eq!(Value::Float(1.0).to_string(), "1.0");
        assert_eq!(Value::Int(2000).to_string(), "2000");
        assert_eq!(Value::Str("d6".into()).to_string(), "d6");
    }

    #[test]
    fn name_parts_escape_what_structures_names_and_paths() {
        let s = |t: &str| Value::Str(t.into()).name_part();
        assert_eq!(s("d6"), "d6");
        assert_eq!(s("a,y_label=b"), "a%2Cy_label%3Db");
        assert_eq!(s("x/y"), "x%2Fy");
        assert_ne!(s("x/y"), s("x_y"));
        assert_eq!(s("50%"), "50%25");
        assert_eq!(s("..\\x"), "..%5Cx");
        let list = Value::List(vec![Value::Str("a,b".into()), Value::Int(1)]);
        assert_eq!(list.name_part(), "[a%2Cb,1]");
        assert_eq!(Value::Float(0.4).name_part(), "0.4");
    }
}
