//! Toy stage kinds for the engine's own tests (the real kinds live in
//! flow-stages, which the engine must not depend on).

use crate::resource::ResourceKind;
use crate::schema::ParamSpec;
use crate::stage::{Context, Outcome, Registry, Stage, StageError};

/// Writes its parameters as its output.
pub struct Echo {
    pub kind: &'static str,
    pub params: fn() -> Vec<ParamSpec>,
}

impl Stage for Echo {
    fn kind(&self) -> &'static str {
        self.kind
    }
    fn version(&self) -> u32 {
        1
    }
    fn replicable(&self) -> bool {
        self.kind == "eval"
    }
    fn about(&self) -> &'static str {
        "test stage"
    }
    fn params(&self) -> Vec<ParamSpec> {
        (self.params)()
    }
    fn run(&self, ctx: &mut Context<'_>) -> Result<Outcome, StageError> {
        let path = ctx.out_path("out.txt");
        let text = format!("{:?}", ctx.params);
        std::fs::write(&path, text).map_err(|e| StageError::io("write", e))?;
        Ok(Outcome::default().output("out.txt", path))
    }
}

pub fn registry() -> Registry {
    let mut r = Registry::new();
    r.register_resource(ResourceKind::new("models", "weights", Vec::new()));
    r.register_resource(ResourceKind::new("generators", "text", Vec::new()));
    r.register(Echo {
        kind: "src",
        params: || {
            vec![
                ParamSpec::int("n", "size").min(1.0).default(10),
                ParamSpec::choice("task", &["a", "b"], "task").default("a"),
                ParamSpec::string("title", "free text"),
                ParamSpec::string("y_label", "free text"),
            ]
        },
    });
    r.register(Echo {
        kind: "mix",
        params: || {
            vec![
                ParamSpec::input("real", "real data").required(),
                ParamSpec::input("generated", "generated data").required(),
                ParamSpec::float("ratio", "share")
                    .min(0.0)
                    .max(1.0)
                    .required(),
                ParamSpec::table(
                    "lora",
                    vec![
                        ParamSpec::int("rank", "rank").min(1.0).default(8),
                        ParamSpec::float("alpha", "alpha")
                            .greater_than(0.0)
                            .default(16.0),
                    ],
                    "adapter",
                ),
            ]
        },
    });
    r.register(Echo {
        kind: "eval",
        params: || {
            vec![
                ParamSpec::input("model", "model").required(),
                ParamSpec::input("data", "data").required(),
            ]
        },
    });
    r.register(Echo {
        kind: "table",
        params: || vec![ParamSpec::gather("from", "rows").required()],
    });
    r
}
