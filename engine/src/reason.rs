//! Why an instance is not fresh: a typed reason, kept apart from how it is shown to people
//! (its `Display`) and to programs (its [`StaleReason::code`] in `flow status --json`).

use std::fmt;

/// Why an instance will run (or, for [`StaleReason::FailedLastTime`], why it failed).
#[derive(Clone, Debug, PartialEq)]
pub enum StaleReason {
    /// No run of this instance is known.
    NeverRun,
    /// The refs name an earlier key, but neither its record nor its failure is left.
    PreviousRunGone,
    /// An input is not fresh, so this instance's key is not known yet.
    InputNotFresh {
        param: String,
        instance: String,
        failed: bool,
    },
    /// The key could not be computed (e.g. an external file is unreadable).
    KeyUnknown { error: String },
    /// A cached output is gone.
    OutputMissing { output: String },
    /// A cached output no longer matches its hash.
    OutputCorrupt { output: String },
    /// The stage record cannot be read.
    RecordUnreadable { why: String },
    /// The last run with exactly these inputs failed.
    FailedLastTime { error: String },
    /// What differs from the last run of this instance.
    Changed {
        changes: Vec<Change>,
        /// The last run failed (so its outputs never existed).
        last_failed: bool,
    },
}

/// One difference between the last run of an instance and now.
#[derive(Clone, Debug, PartialEq)]
pub enum Change {
    Version {
        kind: String,
        from: u32,
        to: u32,
    },
    Parameter {
        name: String,
        from: String,
        to: String,
    },
    ParameterSet {
        name: String,
        value: String,
    },
    ParameterRemoved {
        name: String,
    },
    Input {
        param: String,
        instances: Vec<String>,
    },
    External {
        label: String,
    },
    Seed {
        from: u64,
        to: u64,
    },
    /// Nothing recorded differs: the key scheme itself changed.
    KeyScheme,
}

impl StaleReason {
    /// A stable machine-readable code (documented in docs/status.md).
    pub fn code(&self) -> &'static str {
        match self {
            StaleReason::NeverRun => "never_run",
            StaleReason::PreviousRunGone => "previous_run_gone",
            StaleReason::InputNotFresh { failed: false, .. } => "input_stale",
            StaleReason::InputNotFresh { failed: true, .. } => "input_failed",
            StaleReason::KeyUnknown { .. } => "key_unknown",
            StaleReason::OutputMissing { .. } => "output_missing",
            StaleReason::OutputCorrupt { .. } => "output_corrupt",
            StaleReason::RecordUnreadable { .. } => "record_unreadable",
            StaleReason::FailedLastTime { .. } => "failed_last_time",
            StaleReason::Changed { .. } => "changed",
        }
    }

    /// The codes of what changed, for [`StaleReason::Changed`]; empty otherwise.
    pub fn change_codes(&self) -> Vec<&'static str> {
        match self {
            StaleReason::Changed { changes, .. } => changes.iter().map(Change::code).collect(),
            _ => Vec::new(),
        }
    }
}

impl Change {
    pub fn code(&self) -> &'static str {
        match self {
            Change::Version { .. } => "version",
            Change::Parameter { .. } | Change::ParameterSet { .. } => "parameter",
            Change::ParameterRemoved { .. } => "parameter_removed",
            Change::Input { .. } => "input",
            Change::External { .. } => "external",
            Change::Seed { .. } => "seed",
            Change::KeyScheme => "key_scheme",
        }
    }
}

impl fmt::Display for StaleReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StaleReason::NeverRun => write!(f, "never run"),
            StaleReason::PreviousRunGone => {
                write!(
                    f,
                    "never run with these settings (the last run's record is gone)"
                )
            }
            StaleReason::InputNotFresh {
                param,
                instance,
                failed,
            } => {
                let what = if *failed { "failed" } else { "stale" };
                write!(f, "input `{param}` (`{instance}`) is {what}")
            }
            StaleReason::KeyUnknown { error } => write!(f, "cannot compute key: {error}"),
            StaleReason::OutputMissing { output } => {
                write!(f, "output `{output}` is missing from the cache")
            }
            StaleReason::OutputCorrupt { output } => {
                write!(f, "output `{output}` is corrupt in the cache")
            }
            StaleReason::RecordUnreadable { why } => {
                write!(f, "stage record unreadable ({why})")
            }
            StaleReason::FailedLastTime { error } => write!(f, "failed last time: {error}"),
            StaleReason::Changed {
                changes,
                last_failed,
            } => {
                for (i, change) in changes.iter().enumerate() {
                    if i > 0 {
                        write!(f, "; ")?;
                    }
                    write!(f, "{change}")?;
                }
                if *last_failed {
                    write!(f, " (since the last run, which failed)")?;
                }
                Ok(())
            }
        }
    }
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Change::Version { kind, from, to } => {
                write!(
                    f,
                    "implementation of `{kind}` changed (version {from} -> {to})"
                )
            }
            Change::Parameter { name, from, to } => {
                write!(f, "parameter `{name}` changed from {from} to {to}")
            }
            Change::ParameterSet { name, value } => write!(f, "parameter `{name}` set to {value}"),
            Change::ParameterRemoved { name } => write!(f, "parameter `{name}` removed"),
            Change::Input { param, instances } => {
                write!(f, "input `{param}` (`{}`) changed", instances.join("`, `"))
            }
            Change::External { label } => write!(f, "external input `{label}` changed"),
            Change::Seed { from, to } => write!(f, "seed changed from {from} to {to}"),
            Change::KeyScheme => write!(f, "the key scheme changed (a new version of flow)"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The prose is what `flow status` printed before reasons were typed; the codes are
    /// the stable schema of `status --json`.
    #[test]
    fn reasons_render_for_people_and_code_for_programs() {
        let cases: Vec<(StaleReason, &str, &str)> = vec![
            (StaleReason::NeverRun, "never run", "never_run"),
            (
                StaleReason::InputNotFresh {
                    param: "data".into(),
                    instance: "mix@ratio=0.4".into(),
                    failed: false,
                },
                "input `data` (`mix@ratio=0.4`) is stale",
                "input_stale",
            ),
            (
                StaleReason::InputNotFresh {
                    param: "data".into(),
                    instance: "mix".into(),
                    failed: true,
                },
                "input `data` (`mix`) is failed",
                "input_failed",
            ),
            (
                StaleReason::OutputCorrupt {
                    output: "data.jsonl".into(),
                },
                "output `data.jsonl` is corrupt in the cache",
                "output_corrupt",
            ),
            (
                StaleReason::FailedLastTime {
                    error: "boom".into(),
                },
                "failed last time: boom",
                "failed_last_time",
            ),
            (
                StaleReason::Changed {
                    changes: vec![
                        Change::Parameter {
                            name: "ratio".into(),
                            from: "0.2".into(),
                            to: "0.4".into(),
                        },
                        Change::Seed { from: 1, to: 2 },
                    ],
                    last_failed: true,
                },
                "parameter `ratio` changed from 0.2 to 0.4; seed changed from 1 to 2 \
                 (since the last run, which failed)",
                "changed",
            ),
        ];
        for (reason, prose, code) in cases {
            assert_eq!(reason.to_string(), prose);
            assert_eq!(reason.code(), code);
        }
        let changed = StaleReason::Changed {
            changes: vec![
                Change::External {
                    label: "rocstories/stories.jsonl".into(),
                },
                Change::KeyScheme,
            ],
            last_failed: false,
        };
        assert_eq!(changed.change_codes(), ["external", "key_scheme"]);
        assert!(StaleReason::NeverRun.change_codes().is_empty());
    }
}
