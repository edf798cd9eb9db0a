//! What a stage kind accepts: its parameters, their types, defaults and bounds.
//!
//! Validation of every manifest runs against these declarations, so stage
//! kinds never parse TOML themselves and every error reads the same way: [`check_scalar`]
//! checks one value against its declaration (type, bounds, choices, table fields).

use std::ops::Range;

use crate::diag::Diagnostic;
use crate::value::Value;

/// The type of one parameter.
#[derive(Clone, Debug, PartialEq)]
pub enum ParamType {
    Bool,
    Int,
    Float,
    Str,
    /// A string from a fixed set.
    Choice(&'static [&'static str]),
    /// A list whose items have the given type (a list of lists fans out).
    List(Box<ParamType>),
    /// A free-form table, such as `lora = { rank = 8, alpha = 16 }`, whose
    /// keys are declared by the nested specs.
    Table(Vec<ParamSpec>),
    /// The name of one upstream stage; the instance follows its fan-out.
    Input,
    /// One or more upstream stage names whose instances are all gathered.
    Gather,
    /// The name of an entry of a resource section (`Resource("models")`: a `[models.*]`
    /// entry), declared by a [`crate::resource::ResourceKind`]. In a key the name stands
    /// for the entry's content.
    Resource(&'static str),
}

impl ParamType {
    pub fn describe(&self) -> String {
        match self {
            ParamType::Bool => "a boolean".into(),
            ParamType::Int => "an integer".into(),
            ParamType::Float => "a number".into(),
            ParamType::Str => "a string".into(),
            ParamType::Choice(options) => format!("one of {}", quote_list(options)),
            ParamType::List(item) => format!("an array of {}", item.describe_plural()),
            ParamType::Table(_) => "a table".into(),
            ParamType::Input => "the name of a stage".into(),
            ParamType::Gather => "a stage name or an array of stage names".into(),
            ParamType::Resource(section) => format!("the name of a `[{section}.*]` entry"),
        }
    }

    fn describe_plural(&self) -> String {
        match self {
            ParamType::Bool => "booleans".into(),
            ParamType::Int => "integers".into(),
            ParamType::Float => "numbers".into(),
            ParamType::Str => "strings".into(),
            other => other.describe(),
        }
    }

    /// Whether a TOML array given for this parameter means "fan out".
    pub fn fans_out_on(&self, value: &Value) -> bool {
        match (self, value) {
            (ParamType::List(_), Value::List(items)) => {
                !items.is_empty() && items.iter().all(|v| matches!(v, Value::List(_)))
            }
            (ParamType::Gather | ParamType::Table(_), _) => false,
            (_, Value::List(_)) => true,
            _ => false,
        }
    }
}

pub fn quote_list(items: &[&str]) -> String {
    items
        .iter()
        .map(|s| format!("`{s}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// One declared parameter of a stage kind (or of a nested table).
#[derive(Clone, Debug, PartialEq)]
pub struct ParamSpec {
    pub name: &'static str,
    pub ty: ParamType,
    pub help: &'static str,
    pub default: Option<Value>,
    pub required: bool,
    /// Inclusive lower bound (numbers; list lengths are not bounded here).
    pub min: Option<f64>,
    /// Inclusive upper bound.
    pub max: Option<f64>,
    /// Exclusive lower bound, for "must be positive" values such as a learning rate.
    pub greater_than: Option<f64>,
    /// Exclusive upper bound.
    pub less_than: Option<f64>,
    /// Execution settings (thread counts, concurrency) do not change results
    /// and stay out of the content key; so do secrets. The same mark decides for the
    /// fields of resource entries ([`crate::resource::ResourceKind`]).
    pub in_key: bool,
    /// Secrets never enter keys, records, logs or outputs.
    pub secret: bool,
}

impl ParamSpec {
    pub fn new(name: &'static str, ty: ParamType, help: &'static str) -> Self {
        ParamSpec {
            name,
            ty,
            help,
            default: None,
            required: false,
            min: None,
            max: None,
            greater_than: None,
            less_than: None,
            in_key: true,
            secret: false,
        }
    }
    pub fn bool(name: &'static str, help: &'static str) -> Self {
        Self::new(name, ParamType::Bool, help)
    }
    pub fn int(name: &'static str, help: &'static str) -> Self {
        Self::new(name, ParamType::Int, help)
    }
    pub fn float(name: &'static str, help: &'static str) -> Self {
        Self::new(name, ParamType::Float, help)
    }
    pub fn string(name: &'static str, help: &'static str) -> Self {
        Self::new(name, ParamType::Str, help)
    }
    pub fn choice(
        name: &'static str,
        options: &'static [&'static str],
        help: &'static str,
    ) -> Self {
        Self::new(name, ParamType::Choice(options), help)
    }
    pub fn list(name: &'static str, item: ParamType, help: &'static str) -> Self {
        Self::new(name, ParamType::List(Box::new(item)), help)
    }
    pub fn table(name: &'static str, fields: Vec<ParamSpec>, help: &'static str) -> Self {
        Self::new(name, ParamType::Table(fields), help)
    }
    pub fn input(name: &'static str, help: &'static str) -> Self {
        Self::new(name, ParamType::Input, help)
    }
    pub fn gather(name: &'static str, help: &'static str) -> Self {
        Self::new(name, ParamType::Gather, help)
    }
    /// The name of an entry of the resource section `section` (e.g. `models`).
    pub fn resource(name: &'static str, section: &'static str, help: &'static str) -> Self {
        Self::new(name, ParamType::Resource(section), help)
    }

    pub fn required(mut self) -> Self {
        self.required = true;
        self
    }
    pub fn default(mut self, value: impl Into<Value>) -> Self {
        self.default = Some(value.into());
        self
    }
    pub fn min(mut self, min: f64) -> Self {
        self.min = Some(min);
        self
    }
    pub fn max(mut self, max: f64) -> Self {
        self.max = Some(max);
        self
    }
    pub fn greater_than(mut self, bound: f64) -> Self {
        self.greater_than = Some(bound);
        self
    }
    pub fn less_than(mut self, bound: f64) -> Self {
        self.less_than = Some(bound);
        self
    }
    /// Marks an execution setting that must not change the content key.
    pub fn execution(mut self) -> Self {
        self.in_key = false;
        self
    }
    pub fn secret(mut self) -> Self {
        self.secret = true;
        self.in_key = false;
        self
    }

    /// The bounds of a number parameter for people, e.g. "1 <= x <= 1000000"; `None` for
    /// other types. Includes the implicit default maximum.
    pub fn describe_bounds(&self) -> Option<String> {
        let default_max = match self.ty {
            ParamType::Int => DEFAULT_INT_MAX,
            ParamType::Float => DEFAULT_FLOAT_MAX,
            _ => return None,
        };
        let low = match (self.min, self.greater_than) {
            (Some(m), _) => format!("{} <= ", fmt_bound(m)),
            (None, Some(g)) => format!("{} < ", fmt_bound(g)),
            (None, None) => format!("-{} <= ", fmt_bound(default_max)),
        };
        let high = match (self.max, self.less_than) {
            (Some(m), _) => format!(" <= {}", fmt_bound(m)),
            (None, Some(l)) => format!(" < {}", fmt_bound(l)),
            (None, None) => format!(" <= {}", fmt_bound(default_max)),
        };
        Some(format!("{low}x{high}"))
    }

    pub fn is_reference(&self) -> bool {
        matches!(self.ty, ParamType::Input | ParamType::Gather)
    }

    /// Checks a number against the declared bounds; returns the violated rule.
    ///
    /// Numbers without a declared maximum are still bounded ([`DEFAULT_INT_MAX`],
    /// [`DEFAULT_FLOAT_MAX`]): a count near `i64::MAX` or a float near `1e300` is a typo,
    /// and would overflow an allocation or a duration deep inside a stage.
    pub fn check_bounds(&self, x: f64) -> Option<String> {
        if self.max.is_none() {
            let limit = match self.ty {
                ParamType::Int => Some(DEFAULT_INT_MAX),
                ParamType::Float => Some(DEFAULT_FLOAT_MAX),
                _ => None,
            };
            if let Some(limit) = limit.filter(|&l| x.abs() > l) {
                return Some(format!(
                    "must be between -{0} and {0} (no parameter needs more)",
                    fmt_bound(limit)
                ));
            }
        }
        if let Some(min) = self.min {
            if x < min {
                return Some(format!("must be at least {}", fmt_bound(min)));
            }
        }
        if let Some(max) = self.max {
            if x > max {
                return Some(format!("must be at most {}", fmt_bound(max)));
            }
        }
        if let Some(lo) = self.greater_than {
            if x <= lo {
                return Some(format!("must be greater than {}", fmt_bound(lo)));
            }
        }
        if let Some(hi) = self.less_than {
            if x >= hi {
                return Some(format!("must be less than {}", fmt_bound(hi)));
            }
        }
        None
    }
}

/// The bound of an integer parameter that declares no maximum (`u32::MAX`: any seed a
/// person types, far below what overflows an allocation).
pub const DEFAULT_INT_MAX: f64 = 4_294_967_295.0;
/// The bound of a float parameter that declares no maximum.
pub const DEFAULT_FLOAT_MAX: f64 = 1e12;

fn fmt_bound(x: f64) -> String {
    if x.fract() == 0.0 {
        format!("{}", x as i64)
    } else {
        format!("{x}")
    }
}

/// Checks one value (not a fan-out list) against its declaration: type, bounds, choices,
/// the fields of a table. Widens integers where numbers are expected and fills in the
/// defaults of table fields, in place. `key` is the dotted key the problem is reported at.
pub fn check_scalar(
    key: &str,
    spec: &ParamSpec,
    value: &mut Value,
    span: Range<usize>,
) -> Option<Diagnostic> {
    match (&spec.ty, &*value) {
        (ParamType::Bool, Value::Bool(_)) => None,
        (ParamType::Int, Value::Int(i)) => bound_error(key, spec, *i as f64, span),
        (ParamType::Float, Value::Int(i)) => {
            let x = *i as f64;
            *value = Value::Float(x);
            bound_error(key, spec, x, span)
        }
        (ParamType::Float, Value::Float(x)) => {
            if !x.is_finite() {
                return Some(Diagnostic::new(
                    key,
                    span,
                    format!("`{}` must be finite, found {x}", spec.name),
                ));
            }
            bound_error(key, spec, *x, span)
        }
        (ParamType::Str | ParamType::Input | ParamType::Resource(_), Value::Str(s)) => {
            if s.is_empty() {
                Some(Diagnostic::new(
                    key,
                    span,
                    format!("`{}` must not be empty", spec.name),
                ))
            } else {
                None
            }
        }
        (ParamType::Choice(options), Value::Str(s)) => {
            if options.contains(&s.as_str()) {
                None
            } else {
                let d = Diagnostic::new(
                    key,
                    span,
                    format!(
                        "`{}` must be one of {}, found `{s}`",
                        spec.name,
                        quote_list(options)
                    ),
                );
                Some(d.suggest(s, options.iter().copied()))
            }
        }
        (ParamType::List(item), Value::List(items)) => {
            let item_spec = ParamSpec {
                ty: (**item).clone(),
                ..spec.clone()
            };
            let mut items = items.clone();
            for it in items.iter_mut() {
                if let Some(d) = check_scalar(key, &item_spec, it, span.clone()) {
                    return Some(d);
                }
            }
            *value = Value::List(items);
            None
        }
        (ParamType::Gather, Value::Str(s)) if !s.is_empty() => None,
        (ParamType::Gather, Value::List(items))
            if !items.is_empty() && items.iter().all(|i| matches!(i, Value::Str(_))) =>
        {
            None
        }
        (ParamType::Table(fields), Value::Table(map)) => {
            let mut map = map.clone();
            for (k, v) in map.iter_mut() {
                let fkey = format!("{key}.{k}");
                match fields.iter().find(|f| f.name == k) {
                    Some(f) => {
                        if f.ty.fans_out_on(v) {
                            return Some(type_error(&fkey, span, &f.ty.describe(), v));
                        }
                        if let Some(d) = check_scalar(&fkey, f, v, span.clone()) {
                            return Some(d);
                        }
                    }
                    None => {
                        return Some(
                            Diagnostic::new(
                                &fkey,
                                span,
                                format!("unknown field `{k}` in `{}`", spec.name),
                            )
                            .suggest(k, fields.iter().map(|f| f.name)),
                        )
                    }
                }
            }
            for f in fields {
                if !map.contains_key(f.name) {
                    if let Some(d) = &f.default {
                        map.insert(f.name.to_string(), d.clone());
                    } else if f.required {
                        return Some(Diagnostic::new(
                            key,
                            span,
                            format!("`{}` needs field `{}` ({})", spec.name, f.name, f.help),
                        ));
                    }
                }
            }
            *value = Value::Table(map);
            None
        }
        (ty, other) => Some(type_error(key, span, &ty.describe(), other)),
    }
}

fn bound_error(key: &str, spec: &ParamSpec, x: f64, span: Range<usize>) -> Option<Diagnostic> {
    spec.check_bounds(x).map(|rule| {
        Diagnostic::new(
            key,
            span,
            format!("`{}` {rule}, found {}", spec.name, trim_num(x)),
        )
    })
}

fn trim_num(x: f64) -> String {
    if x.fract() == 0.0 && x.abs() < 1e15 {
        format!("{}", x as i64)
    } else {
        format!("{x}")
    }
}

/// "`name` must be EXPECTED, found TYPE `value`", reported at `key` (its last segment names
/// the value).
pub fn type_error(key: &str, span: Range<usize>, expected: &str, found: &Value) -> Diagnostic {
    let name = key.rsplit('.').next().unwrap_or(key).trim_matches('"');
    Diagnostic::new(
        key,
        span,
        format!(
            "`{name}` must be {expected}, found {} `{found}`",
            found.type_name()
        ),
    )
}

impl From<bool> for Value {
    fn from(b: bool) -> Self {
        Value::Bool(b)
    }
}
impl From<i64> for Value {
    fn from(i: i64) -> Self {
        Value::Int(i)
    }
}
impl From<i32> for Value {
    fn from(i: i32) -> Self {
        Value::Int(i64::from(i))
    }
}
impl From<f64> for Value {
    fn from(f: f64) -> Self {
        Value::Float(f)
    }
}
impl From<&str> for Value {
    fn from(s: &str) -> Self {
        Value::Str(s.to_string())
    }
}
impl From<String> for Value {
    fn from(s: String) -> Self {
        Value::Str(s)
    }
}
impl<T: Into<Value>> From<Vec<T>> for Value {
    fn from(items: Vec<T>) -> Self {
        Value::List(items.into_iter().map(Into::into).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::toml_spans::value_of;

    /// What checking a value gives: the value as checked (integers widened, table
    /// defaults filled in), or the error message.
    fn check(spec: &ParamSpec, toml: &str) -> Result<Value, String> {
        let mut value = value_of(toml);
        match check_scalar(&format!("stages.s.{}", spec.name), spec, &mut value, 0..0) {
            None => Ok(value),
            Some(d) => Err(match &d.help {
                Some(help) => format!("{} ({help})", d.message),
                None => d.message,
            }),
        }
    }

    fn lora() -> ParamSpec {
        ParamSpec::table(
            "lora",
            vec![
                ParamSpec::int("rank", "rank").min(1.0).default(8),
                ParamSpec::float("alpha", "alpha")
                    .greater_than(0.0)
                    .required(),
            ],
            "adapter",
        )
    }

    /// Each row: a declaration, a value as written in TOML, and what checking gives (the
    /// value after checking, or a part of the error).
    #[test]
    fn values_against_their_declarations() {
        let int = || ParamSpec::int("n", "count").min(1.0).max(100.0);
        let float = || {
            ParamSpec::float("lr", "rate")
                .greater_than(0.0)
                .less_than(1.0)
        };
        let choice = || ParamSpec::choice("task", &["stories", "qa"], "task");
        let list = || ParamSpec::list("metrics", ParamType::Str, "names");
        let ok = |toml: &str| Ok::<Value, &str>(value_of(toml));
        let rows: Vec<(ParamSpec, &str, Result<Value, &str>)> = vec![
            (ParamSpec::bool("b", "flag"), "true", ok("true")),
            (
                ParamSpec::bool("b", "flag"),
                "1",
                Err("`b` must be a boolean, found integer `1`"),
            ),
            (int(), "7", ok("7")),
            (int(), "0", Err("`n` must be at least 1, found 0")),
            (int(), "101", Err("`n` must be at most 100, found 101")),
            (int(), "2.5", Err("`n` must be an integer, found float")),
            (int(), "\"7\"", Err("`n` must be an integer, found string")),
            (
                ParamSpec::int("seed", "unbounded"),
                "4294967296",
                Err("must be between -4294967295 and 4294967295"),
            ),
            (float(), "0.5", ok("0.5")),
            (float(), "0", Err("`lr` must be greater than 0, found 0")),
            (float(), "1", Err("`lr` must be less than 1, found 1")),
            (ParamSpec::float("x", "widened"), "3", ok("3.0")),
            (
                ParamSpec::float("x", "unbounded"),
                "1e13",
                Err("must be between -1000000000000 and 1000000000000"),
            ),
            (ParamSpec::string("title", "text"), "\"a\"", ok("\"a\"")),
            (
                ParamSpec::string("title", "text"),
                "\"\"",
                Err("`title` must not be empty"),
            ),
            (
                ParamSpec::input("data", "stage"),
                "\"\"",
                Err("`data` must not be empty"),
            ),
            (
                ParamSpec::input("data", "stage"),
                "3",
                Err("must be the name of a stage"),
            ),
            (choice(), "\"qa\"", ok("\"qa\"")),
            (choice(), "\"story\"", Err("did you mean `stories`?")),
            (
                choice(),
                "\"banana\"",
                Err("must be one of `stories`, `qa`, found `banana`"),
            ),
            (list(), "[\"a\", \"b\"]", ok("[\"a\", \"b\"]")),
            (
                list(),
                "[\"a\", 2]",
                Err("`metrics` must be a string, found integer `2`"),
            ),
            (list(), "\"a\"", Err("must be an array of strings")),
            (ParamSpec::gather("from", "stages"), "\"a\"", ok("\"a\"")),
            (
                ParamSpec::gather("from", "stages"),
                "[\"a\", \"b\"]",
                ok("[\"a\", \"b\"]"),
            ),
            (
                ParamSpec::gather("from", "stages"),
                "[]",
                Err("a stage name or an array"),
            ),
            (
                ParamSpec::gather("from", "stages"),
                "[\"a\", 1]",
                Err("a stage name or an array"),
            ),
            (lora(), "{ alpha = 16 }", ok("{ alpha = 16.0, rank = 8 }")),
            (
                lora(),
                "{ rank = 4, alpha = 1 }",
                ok("{ alpha = 1.0, rank = 4 }"),
            ),
            (
                lora(),
                "{ rank = 4 }",
                Err("`lora` needs field `alpha` (alpha)"),
            ),
            (
                lora(),
                "{ alpha = 1, rnak = 4 }",
                Err("unknown field `rnak` in `lora` (did you mean `rank`?)"),
            ),
            (
                lora(),
                "{ alpha = 1, rank = 0 }",
                Err("`rank` must be at least 1, found 0"),
            ),
            (
                lora(),
                "{ alpha = 1, rank = [1, 2] }",
                Err("`rank` must be an integer, found array"),
            ),
            (
                lora(),
                "3",
                Err("`lora` must be a table, found integer `3`"),
            ),
        ];
        let mut failures = Vec::new();
        for (spec, toml, expected) in rows {
            let got = check(&spec, toml);
            let good = match (&got, &expected) {
                (Ok(v), Ok(e)) => v == e,
                (Err(msg), Err(part)) => msg.contains(part),
                _ => false,
            };
            if !good {
                failures.push(format!(
                    "{} = {toml}: got {got:?}, expected {expected:?}",
                    spec.name
                ));
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    #[test]
    fn errors_in_table_fields_name_the_field() {
        let mut v = value_of("{ alpha = 1, rank = 0 }");
        let d = check_scalar("stages.t.lora", &lora(), &mut v, 3..9).unwrap();
        assert_eq!(d.key, "stages.t.lora.rank");
        assert_eq!(d.span, 3..9);
    }

    #[test]
    fn a_list_of_lists_fans_out_and_a_plain_list_does_not() {
        let list = ParamType::List(Box::new(ParamType::Int));
        assert!(!list.fans_out_on(&value_of("[1, 2]")));
        assert!(list.fans_out_on(&value_of("[[1], [2]]")));
        assert!(ParamType::Int.fans_out_on(&value_of("[1, 2]")));
        assert!(!ParamType::Gather.fans_out_on(&value_of("[\"a\"]")));
        assert!(!ParamType::Int.fans_out_on(&value_of("1")));
    }

    #[test]
    fn bounds_read_as_people_write_them() {
        let rows = [
            (ParamSpec::int("n", "").min(1.0).max(10.0), "1 <= x <= 10"),
            (
                ParamSpec::float("lr", "").greater_than(0.0),
                "0 < x <= 1000000000000",
            ),
            (ParamSpec::int("n", ""), "-4294967295 <= x <= 4294967295"),
            (
                ParamSpec::float("p", "").min(0.0).less_than(0.5),
                "0 <= x < 0.5",
            ),
        ];
        for (spec, expected) in rows {
            assert_eq!(spec.describe_bounds().as_deref(), Some(expected));
        }
        assert_eq!(ParamSpec::string("s", "").describe_bounds(), None);
    }
}
