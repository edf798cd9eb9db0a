//! The site config (`flow run --executor-config site.toml`): how a cluster runs jobs. It
//! belongs to the machine, not the experiment: nothing in it enters a key.
//!
//! ```toml
//! [slurm]
//! max_jobs = 64                    # jobs in flight at once
//! local_kinds = ["table", "plot"]  # computed in the run itself, not submitted
//! poll_interval_s = 2.0            # one squeue for all jobs this often
//! command_timeout_s = 30           # every sbatch / squeue / scancel
//! flow = "/shared/bin/flow"        # the binary jobs run (default: this one)
//! job_dir = "/shared/flow-jobs"    # job scripts and logs (default: <cache>/jobs)
//!
//! [slurm.defaults]                 # every kind; [slurm.kinds.KIND] overrides field by field
//! partition = "cpu"
//! time = "01:00:00"
//!
//! [slurm.kinds.train_lora]
//! partition = "gpu"
//! gpus = 1                         # --gpus=1 (or "a100:1")
//! cpus = 8                         # --cpus-per-task=8
//! mem = "32G"                      # --mem=32G
//! extra = ["--requeue"]            # appended to the defaults' extra flags
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// A site config file.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SiteConfig {
    #[serde(default)]
    pub slurm: SlurmSettings,
}

/// `[slurm]`: how `--executor slurm` submits and tracks jobs.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SlurmSettings {
    /// Jobs in flight (pending or running) at once.
    pub max_jobs: usize,
    /// Kinds computed in the run itself (light ones: tables, plots).
    pub local_kinds: Vec<String>,
    /// Seconds between two polls (one `squeue` for every job in flight).
    pub poll_interval_s: f64,
    /// Seconds any Slurm command may take (they hang while a daemon is down).
    pub command_timeout_s: f64,
    /// The flow binary the jobs run; the same path must hold it on every node.
    pub flow: Option<PathBuf>,
    /// Where job scripts and logs go (on a file system the nodes share).
    pub job_dir: Option<PathBuf>,
    /// Resources of every job.
    pub defaults: SlurmResources,
    /// Resources per stage kind, over the defaults.
    pub kinds: BTreeMap<String, SlurmResources>,
}

impl Default for SlurmSettings {
    fn default() -> Self {
        SlurmSettings {
            max_jobs: 64,
            local_kinds: Vec::new(),
            poll_interval_s: 2.0,
            command_timeout_s: 30.0,
            flow: None,
            job_dir: None,
            defaults: SlurmResources::default(),
            kinds: BTreeMap::new(),
        }
    }
}

/// What a job asks Slurm for; unset fields are Slurm's defaults.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SlurmResources {
    /// `--cpus-per-task`.
    pub cpus: Option<u32>,
    /// `--gpus`: a count, or `type:count`.
    pub gpus: Option<Gpus>,
    /// `--mem`, e.g. `"16G"`.
    pub mem: Option<String>,
    /// `--time`, e.g. `"02:00:00"`.
    pub time: Option<String>,
    pub partition: Option<String>,
    pub account: Option<String>,
    pub qos: Option<String>,
    /// More sbatch flags, e.g. `["--constraint=a100", "--requeue"]`.
    #[serde(default)]
    pub extra: Vec<String>,
}

/// `gpus = 1` or `gpus = "a100:1"`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum Gpus {
    Count(u32),
    Spec(String),
}

impl std::fmt::Display for Gpus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Gpus::Count(n) => write!(f, "{n}"),
            Gpus::Spec(s) => f.write_str(s),
        }
    }
}

impl SlurmResources {
    /// `self` over `base`, field by field; `extra` flags are appended to the base's.
    pub fn over(&self, base: &SlurmResources) -> SlurmResources {
        SlurmResources {
            cpus: self.cpus.or(base.cpus),
            gpus: self.gpus.clone().or_else(|| base.gpus.clone()),
            mem: self.mem.clone().or_else(|| base.mem.clone()),
            time: self.time.clone().or_else(|| base.time.clone()),
            partition: self.partition.clone().or_else(|| base.partition.clone()),
            account: self.account.clone().or_else(|| base.account.clone()),
            qos: self.qos.clone().or_else(|| base.qos.clone()),
            extra: base.extra.iter().chain(&self.extra).cloned().collect(),
        }
    }

    /// The sbatch flags.
    pub fn flags(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut flag = |name: &str, value: Option<String>| {
            if let Some(v) = value {
                out.push(format!("--{name}={v}"));
            }
        };
        flag("cpus-per-task", self.cpus.map(|c| c.to_string()));
        flag("gpus", self.gpus.as_ref().map(Gpus::to_string));
        flag("mem", self.mem.clone());
        flag("time", self.time.clone());
        flag("partition", self.partition.clone());
        flag("account", self.account.clone());
        flag("qos", self.qos.clone());
        out.extend(self.extra.iter().cloned());
        out
    }
}

impl SlurmSettings {
    /// The resources of a job of `kind`.
    pub fn resources(&self, kind: &str) -> SlurmResources {
        match self.kinds.get(kind) {
            Some(r) => r.over(&self.defaults),
            None => self.defaults.clone(),
        }
    }
}

/// A site config that cannot be used; each names the file and the problem.
#[derive(Debug, thiserror::Error)]
pub enum SiteError {
    #[error("reading the site config {}: {source}", .path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("site config {}: {message}", .path.display())]
    Invalid { path: PathBuf, message: String },
}

impl SiteConfig {
    /// Reads and checks a site config. `kinds` are the stage kinds there are: a kind the
    /// file names that is not one of them is an error (a typo would silently send a heavy
    /// kind to the default resources).
    pub fn load<'k>(
        path: &Path,
        kinds: impl IntoIterator<Item = &'k str>,
    ) -> Result<SiteConfig, SiteError> {
        let text = std::fs::read_to_string(path).map_err(|source| SiteError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, kinds).map_err(|message| SiteError::Invalid {
            path: path.to_path_buf(),
            message,
        })
    }

    /// [`SiteConfig::load`] from text; the error says where in it.
    pub fn parse<'k>(
        text: &str,
        kinds: impl IntoIterator<Item = &'k str>,
    ) -> Result<SiteConfig, String> {
        let config: SiteConfig = toml::from_str(text).map_err(|e| {
            let at = e
                .span()
                .map(|s| {
                    let line = text[..s.start.min(text.len())].matches('\n').count() + 1;
                    format!("line {line}: ")
                })
                .unwrap_or_default();
            format!("{at}{}", e.message())
        })?;
        let kinds: Vec<&str> = kinds.into_iter().collect();
        let s = &config.slurm;
        let unknown = |k: &String| !kinds.contains(&k.as_str());
        for (what, list) in [
            ("[slurm.kinds]", s.kinds.keys().collect::<Vec<_>>()),
            ("slurm.local_kinds", s.local_kinds.iter().collect()),
        ] {
            if let Some(k) = list.into_iter().find(|k| unknown(k)) {
                let hint = crate::diag::near_miss(k, kinds.iter().copied())
                    .map(|n| format!("did you mean `{n}`? "))
                    .unwrap_or_default();
                return Err(format!(
                    "{what}: no stage kind `{k}` ({hint}kinds are {})",
                    kinds.join(", ")
                ));
            }
        }
        if s.max_jobs == 0 {
            return Err("slurm.max_jobs must be at least 1".into());
        }
        for (name, v) in [
            ("slurm.poll_interval_s", s.poll_interval_s),
            ("slurm.command_timeout_s", s.command_timeout_s),
        ] {
            if !(v.is_finite() && v > 0.0 && v <= 86_400.0) {
                return Err(format!(
                    "{name} must be a number of seconds above 0 (at most a day), not {v}"
                ));
            }
        }
        for (kind, r) in std::iter::once(("defaults", &s.defaults))
            .chain(s.kinds.iter().map(|(k, r)| (k.as_str(), r)))
        {
            if let Some(flag) = r.extra.iter().find(|f| !f.starts_with('-')) {
                return Err(format!(
                    "slurm.{}.extra: `{flag}` is not a flag (each entry is one sbatch \
                     flag, e.g. \"--constraint=a100\")",
                    if kind == "defaults" {
                        "defaults".to_string()
                    } else {
                        format!("kinds.{kind}")
                    }
                ));
            }
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KINDS: [&str; 4] = ["source", "table", "train_lora", "eval_loss"];

    #[test]
    fn kinds_take_the_defaults_field_by_field() {
        let c = SiteConfig::parse(
            r#"
[slurm]
max_jobs = 8
local_kinds = ["table"]

[slurm.defaults]
partition = "cpu"
time = "01:00:00"
extra = ["--requeue"]

[slurm.kinds.train_lora]
partition = "gpu"
gpus = 1
cpus = 4
mem = "16G"
extra = ["--constraint=a100"]

[slurm.kinds.eval_loss]
gpus = "a100:1"
"#,
            KINDS,
        )
        .unwrap();
        let s = &c.slurm;
        assert_eq!((s.max_jobs, s.poll_interval_s), (8, 2.0));
        assert_eq!(s.local_kinds, ["table"]);
        assert_eq!(
            s.resources("train_lora").flags(),
            [
                "--cpus-per-task=4",
                "--gpus=1",
                "--mem=16G",
                "--time=01:00:00",
                "--partition=gpu",
                "--requeue",
                "--constraint=a100"
            ]
        );
        assert_eq!(
            s.resources("eval_loss").flags(),
            [
                "--gpus=a100:1",
                "--time=01:00:00",
                "--partition=cpu",
                "--requeue"
            ]
        );
        assert_eq!(
            s.resources("source").flags(),
            ["--time=01:00:00", "--partition=cpu", "--requeue"]
        );
    }

    #[test]
    fn an_empty_file_is_the_defaults() {
        let c = SiteConfig::parse("", KINDS).unwrap();
        assert_eq!(c, SiteConfig::default());
        assert!(c.slurm.resources("train_lora").flags().is_empty());
    }

    #[test]
    fn mistakes_name_the_key_and_the_line() {
        let err = SiteConfig::parse("[slurm]\nmax_job = 3\n", KINDS).unwrap_err();
        assert!(err.contains("line 2") && err.contains("max_job"), "{err}");
        let err = SiteConfig::parse("[slurm.kinds.trian_lora]\ngpus = 1\n", KINDS).unwrap_err();
        assert!(
            err.contains("`trian_lora`") && err.contains("did you mean `train_lora`"),
            "{err}"
        );
        let err = SiteConfig::parse("[slurm]\nlocal_kinds = [\"plott\"]\n", KINDS).unwrap_err();
        assert!(err.contains("slurm.local_kinds"), "{err}");
        let err = SiteConfig::parse("[slurm]\nmax_jobs = 0\n", KINDS).unwrap_err();
        assert!(err.contains("max_jobs"), "{err}");
        let err = SiteConfig::parse("[slurm]\npoll_interval_s = -1\n", KINDS).unwrap_err();
        assert!(err.contains("poll_interval_s"), "{err}");
        let err =
            SiteConfig::parse("[slurm.kinds.source]\nextra = [\"a100\"]\n", KINDS).unwrap_err();
        assert!(err.contains("slurm.kinds.source.extra"), "{err}");
        let err = SiteConfig::parse("[slurm.defaults]\ngpus = true\n", KINDS).unwrap_err();
        assert!(err.contains("line 2"), "{err}");
    }

    #[test]
    fn a_missing_file_names_it() {
        let err = SiteConfig::load(Path::new("/nonexistent/site.toml"), KINDS).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/site.toml"), "{err}");
    }
}
