//! Diagnostics for manifests: every problem names the file, line, column and
//! key, and suggests the near miss when there is one.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use codespan_reporting::diagnostic::{Diagnostic as CsDiagnostic, Label};
use codespan_reporting::files::SimpleFile;
use codespan_reporting::term::{self, termcolor::NoColor};

/// One problem in a manifest.
#[derive(Clone, Debug, PartialEq)]
pub struct Diagnostic {
    pub message: String,
    /// Dotted path of the offending key, e.g. `stages.train.lr`.
    pub key: String,
    pub span: Range<usize>,
    pub help: Option<String>,
}

impl Diagnostic {
    pub fn new(key: impl Into<String>, span: Range<usize>, message: impl Into<String>) -> Self {
        Diagnostic {
            message: message.into(),
            key: key.into(),
            span,
            help: None,
        }
    }

    pub fn with_help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }

    /// Adds "did you mean `x`?" when a candidate is close to `given`, else
    /// `otherwise` (e.g. the list of valid names).
    pub fn suggest_or<'a>(
        self,
        given: &str,
        candidates: impl IntoIterator<Item = &'a str>,
        otherwise: impl FnOnce() -> String,
    ) -> Self {
        match near_miss(given, candidates) {
            Some(near) => self.with_help(format!("did you mean `{near}`?")),
            None => self.with_help(otherwise()),
        }
    }

    /// Adds "did you mean `x`?" when a candidate is close to `given`.
    pub fn suggest<'a>(
        mut self,
        given: &str,
        candidates: impl IntoIterator<Item = &'a str>,
    ) -> Self {
        if let Some(near) = near_miss(given, candidates) {
            self.help = Some(format!("did you mean `{near}`?"));
        }
        self
    }
}

/// The closest candidate to `given`, if it is close enough to be a typo.
pub fn near_miss<'a>(
    given: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    let given_lower = given.to_lowercase();
    candidates
        .into_iter()
        .map(|c| (strsim::jaro_winkler(&given_lower, &c.to_lowercase()), c))
        .filter(|(score, _)| *score >= 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
}

/// All problems found in one manifest, with the text needed to show them.
#[derive(Clone, Debug)]
pub struct ManifestErrors {
    pub path: PathBuf,
    pub source: String,
    pub diagnostics: Vec<Diagnostic>,
}

impl ManifestErrors {
    /// 1-based line and column of a byte offset.
    pub fn line_col(&self, offset: usize) -> (usize, usize) {
        line_col(&self.source, offset)
    }

    /// `file:line:col: message` lines, for logs and machine-readable output.
    pub fn short(&self) -> Vec<String> {
        self.diagnostics
            .iter()
            .map(|d| {
                let (line, col) = self.line_col(d.span.start);
                let mut s = format!(
                    "{}:{line}:{col}: {} (key `{}`)",
                    self.path.display(),
                    d.message,
                    d.key
                );
                if let Some(help) = &d.help {
                    s.push_str(&format!("; {help}"));
                }
                s
            })
            .collect()
    }

    /// Snippets with the offending text underlined, as a compiler shows them.
    pub fn render(&self) -> String {
        let file = SimpleFile::new(self.path.display().to_string(), &self.source);
        let mut out = NoColor::new(Vec::new());
        let config = term::Config::default();
        for d in &self.diagnostics {
            let (line, col) = self.line_col(d.span.start);
            let mut notes = vec![format!(
                "at {}:{line}:{col}, key `{}`",
                self.path.display(),
                d.key
            )];
            if let Some(help) = &d.help {
                notes.push(format!("help: {help}"));
            }
            let span = clamp(&d.span, self.source.len());
            let cs = CsDiagnostic::error()
                .with_message(&d.message)
                .with_labels(vec![Label::primary((), span)])
                .with_notes(notes);
            // Rendering into memory cannot fail except on a bad span, which clamp prevents.
            let _ = term::emit_to_write_style(&mut out, &config, &file, &cs);
        }
        String::from_utf8_lossy(&out.into_inner()).into_owned()
    }
}

impl fmt::Display for ManifestErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.render())?;
        let n = self.diagnostics.len();
        write!(
            f,
            "{} error{} in {}",
            n,
            if n == 1 { "" } else { "s" },
            self.path.display()
        )
    }
}

impl std::error::Error for ManifestErrors {}

fn clamp(span: &Range<usize>, len: usize) -> Range<usize> {
    let start = span.start.min(len);
    let end = span.end.clamp(start, len);
    start..end
}

pub fn line_col(source: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(source.len());
    let before = &source.as_bytes()[..offset];
    let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
    let line_start = before
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |p| p + 1);
    let col = String::from_utf8_lossy(&before[line_start..])
        .chars()
        .count()
        + 1;
    (line, col)
}

/// A manifest path for messages: relative to the working directory when possible.
pub fn display_path(path: &Path) -> PathBuf {
    std::env::current_dir()
        .ok()
        .and_then(|cwd| path.strip_prefix(cwd).ok().map(Path::to_path_buf))
        .unwrap_or_else(|| path.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn near_miss_finds_typos_only() {
        let keys = ["weight_decay", "lr", "epochs"];
        assert_eq!(near_miss("weight_decy", keys), Some("weight_decay"));
        assert_eq!(near_miss("epoch", keys), Some("epochs"));
        assert_eq!(near_miss("banana", keys), None);
    }

    #[test]
    fn line_col_counts_from_one() {
        let src = "a = 1\nbé = 2\n";
        assert_eq!(line_col(src, 0), (1, 1));
        assert_eq!(line_col(src, 6), (2, 1));
        assert_eq!(line_col(src, src.find('=').unwrap()), (1, 3));
        assert_eq!(line_col(src, 10), (2, 4));
    }
}
