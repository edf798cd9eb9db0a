//! Diagnostics for manifests: every problem names the file, line, column and
//! key, and suggests the near miss when there is one.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use codespan_reporting::diagnostic::{Diagnostic as CsDiagnostic, Label};
use codespan_reporting::files::SimpleFiles;
use codespan_reporting::term::{self, termcolor::NoColor};

/// One problem in a manifest.
#[derive(Clone, Debug, PartialEq)]
pub struct Diagnostic {
    pub message: String,
    /// Dotted path of the offending key, e.g. `stages.train.lr`.
    pub key: String,
    pub span: Range<usize>,
    pub help: Option<String>,
    /// Other places the problem involves (say, where a name was first defined), each with
    /// a short label; shown underlined beside the main span.
    pub related: Vec<(Range<usize>, String)>,
}

impl Diagnostic {
    pub fn new(key: impl Into<String>, span: Range<usize>, message: impl Into<String>) -> Self {
        Diagnostic {
            message: message.into(),
            key: key.into(),
            span,
            help: None,
            related: Vec::new(),
        }
    }

    /// Adds a secondary place, e.g. the first definition of a name defined twice.
    pub fn with_related(mut self, span: Range<usize>, label: impl Into<String>) -> Self {
        self.related.push((span, label.into()));
        self
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

/// A file that a manifest includes (`include = [...]`).
///
/// The spans of a manifest are offsets into one space that holds its files one after
/// another: the manifest itself from 0, then each included file from its `base` (past the
/// end of the file before it), so a span alone says which file it points into.
#[derive(Clone, Debug, PartialEq)]
pub struct SourceFile {
    pub path: PathBuf,
    pub text: String,
    pub base: usize,
    /// The span of the `include` item that read it (in the including file).
    pub included_at: Range<usize>,
}

/// All problems found in one manifest, with the text needed to show them.
#[derive(Clone, Debug)]
pub struct ManifestErrors {
    pub path: PathBuf,
    pub source: String,
    /// The files the manifest includes, by `base`; spans at or past a file's `base` point
    /// into it.
    pub included: Vec<SourceFile>,
    pub diagnostics: Vec<Diagnostic>,
}

/// Where an offset of a manifest's span space lies: `(file, path, text, offset in the
/// file)`, file 0 being the manifest and `k` its `k`-th included file.
pub fn locate<'a>(
    path: &'a Path,
    source: &'a str,
    included: &'a [SourceFile],
    offset: usize,
) -> (usize, &'a Path, &'a str, usize) {
    match included.iter().rposition(|f| f.base <= offset) {
        Some(k) => {
            let f = &included[k];
            (k + 1, &f.path, &f.text, offset - f.base)
        }
        None => (0, path, source, offset),
    }
}

/// `path:line:col` of an offset of a manifest's span space.
pub fn location(path: &Path, source: &str, included: &[SourceFile], offset: usize) -> String {
    let (_, path, text, local) = locate(path, source, included, offset);
    let (line, col) = line_col(text, local);
    format!("{}:{line}:{col}", path.display())
}

impl ManifestErrors {
    /// 1-based line and column of an offset, in the file the offset points into.
    pub fn line_col(&self, offset: usize) -> (usize, usize) {
        let (_, _, text, local) = locate(&self.path, &self.source, &self.included, offset);
        line_col(text, local)
    }

    /// `path:line:col` of an offset, naming the file it points into.
    pub fn location(&self, offset: usize) -> String {
        location(&self.path, &self.source, &self.included, offset)
    }

    /// "included from PATH:LINE:COL" for each file between the one an offset points into
    /// and the manifest, innermost first; empty for the manifest's own text.
    pub fn include_chain(&self, offset: usize) -> Vec<String> {
        let mut out = Vec::new();
        let mut file = locate(&self.path, &self.source, &self.included, offset).0;
        // Each step moves to an earlier file (a file is read after the one including it).
        while file > 0 && out.len() < self.included.len() {
            let at = self.included[file - 1].included_at.start;
            out.push(format!("included from {}", self.location(at)));
            file = locate(&self.path, &self.source, &self.included, at).0;
        }
        out
    }

    /// `file:line:col: message` lines, for logs and machine-readable output.
    pub fn short(&self) -> Vec<String> {
        self.diagnostics
            .iter()
            .map(|d| {
                let mut s = format!(
                    "{}: {} (key `{}`)",
                    self.location(d.span.start),
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
        let mut files = SimpleFiles::new();
        files.add(self.path.display().to_string(), self.source.as_str());
        for f in &self.included {
            files.add(f.path.display().to_string(), f.text.as_str());
        }
        // A span in the file it points into, clamped to it.
        let label = |span: &Range<usize>| {
            let (file, _, text, start) =
                locate(&self.path, &self.source, &self.included, span.start);
            let end = start + span.end.saturating_sub(span.start);
            (file, clamp(&(start..end), text.len()))
        };
        let mut out = NoColor::new(Vec::new());
        let config = term::Config::default();
        for d in &self.diagnostics {
            let mut notes = vec![format!(
                "at {}, key `{}`",
                self.location(d.span.start),
                d.key
            )];
            notes.extend(self.include_chain(d.span.start));
            if let Some(help) = &d.help {
                notes.push(format!("help: {help}"));
            }
            let (file, span) = label(&d.span);
            let mut labels = vec![Label::primary(file, span)];
            for (span, text) in &d.related {
                let (file, span) = label(span);
                labels.push(Label::secondary(file, span).with_message(text));
            }
            let cs = CsDiagnostic::error()
                .with_message(&d.message)
                .with_labels(labels)
                .with_notes(notes);
            // Rendering into memory cannot fail except on a bad span, which clamp prevents.
            let _ = term::emit_to_write_style(&mut out, &config, &files, &cs);
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

    /// Spans past the manifest's text point into the included file whose range holds them.
    #[test]
    fn spans_name_the_file_they_point_into() {
        let included = vec![
            SourceFile {
                path: "common/a.toml".into(),
                text: "x = 1\ny = 2\n".into(),
                base: 11,
                included_at: 0..1,
            },
            SourceFile {
                path: "common/b.toml".into(),
                text: "z = 3\n".into(),
                base: 24,
                included_at: 13..14,
            },
        ];
        let (path, source) = (Path::new("m.toml"), "[flow]\nab\n");
        let at = |offset| location(path, source, &included, offset);
        assert_eq!(at(0), "m.toml:1:1");
        assert_eq!(at(10), "m.toml:3:1");
        assert_eq!(at(11), "common/a.toml:1:1");
        assert_eq!(at(17), "common/a.toml:2:1");
        assert_eq!(at(24), "common/b.toml:1:1");
        assert_eq!(at(28), "common/b.toml:1:5");

        let errors = ManifestErrors {
            path: path.into(),
            source: source.into(),
            included,
            diagnostics: vec![Diagnostic::new("y", 17..18, "bad y")
                .with_related(0..6, "see here")
                .with_help("fix it")],
        };
        assert_eq!(
            errors.short(),
            ["common/a.toml:2:1: bad y (key `y`); fix it"]
        );
        let shown = errors.render();
        assert!(shown.contains("┌─ common/a.toml:2:1"), "{shown}");
        assert!(shown.contains("2 │ y = 2"), "{shown}");
        assert!(shown.contains("┌─ m.toml:1:1"), "{shown}");
        assert!(shown.contains("see here"), "{shown}");
        assert!(shown.contains("at common/a.toml:2:1, key `y`"), "{shown}");
        assert_eq!(errors.line_col(17), (2, 1));
        assert!(shown.contains("included from m.toml:1:1"), "{shown}");
        // b.toml is included by a.toml, itself included by the manifest.
        assert_eq!(
            errors.include_chain(25),
            [
                "included from common/a.toml:1:3",
                "included from m.toml:1:1"
            ]
        );
        assert!(errors.include_chain(3).is_empty());
    }
}
