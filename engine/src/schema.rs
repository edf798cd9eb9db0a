//! What a stage kind accepts: its parameters, their types, defaults and bounds.
//!
//! Validation of every manifest runs against these declarations, so stage
//! kinds never parse TOML themselves and every error reads the same way.

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
    /// The name of an entry of `[models.*]`.
    Model,
    /// The name of an entry of `[generators.*]`.
    Generator,
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
            ParamType::Model => "the name of a `[models.*]` entry".into(),
            ParamType::Generator => "the name of a `[generators.*]` entry".into(),
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
    /// and stay out of the content key.
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
    pub fn model(name: &'static str, help: &'static str) -> Self {
        Self::new(name, ParamType::Model, help)
    }
    pub fn generator(name: &'static str, help: &'static str) -> Self {
        Self::new(name, ParamType::Generator, help)
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
