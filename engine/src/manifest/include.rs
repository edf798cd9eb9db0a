//! `include = ["common/x.toml", ...]`: files whose stages, resources and profiles a
//! manifest shares with others.
//!
//! - Paths are relative to the including file; included files may include others.
//! - An included file's stages, `[models.*]` and `[generators.*]` join the manifest's:
//!   first those of the files it includes, in include order, then its own (so stages
//!   are ordered as in one file with every include written out in place, at the top).
//!   A name defined in two files is an error naming both places.
//! - A file is read once, however many files include it; a file including itself
//!   (directly or through others) is an error showing the chain.
//! - Only the manifest has `[flow]`. Profiles merge as described in `profiles.rs`.
//! - Errors in an included file point into it: each file has its own range of the
//!   manifest's span space ([`SourceFile`]).

use std::ops::Range;
use std::path::{Component, Path, PathBuf};

use toml::de::DeValue;
use toml::Spanned;

use super::toml_spans::de_type;
use super::{Loader, Manifest, Seen};
use crate::diag::{Diagnostic, SourceFile};

/// The files a manifest reads: each once, and never one from within itself.
pub(super) struct Files {
    /// What identifies each file read so far (its canonical path where it has one).
    read: Vec<PathBuf>,
    /// The chain of files being read, the manifest first.
    chain: Vec<Link>,
}

/// A file being read.
struct Link {
    id: PathBuf,
    /// The path it was read from (what its own includes are relative to).
    path: PathBuf,
    /// The path as shown in messages (`a/../b` as `b`).
    shown: PathBuf,
}

impl Files {
    pub(super) fn new(manifest: &Path) -> Self {
        let id = identity(manifest);
        Files {
            read: vec![id.clone()],
            chain: vec![Link {
                id,
                path: manifest.to_path_buf(),
                shown: manifest.to_path_buf(),
            }],
        }
    }
}

/// What identifies a file: its canonical path, else the path as given.
fn identity(path: &Path) -> PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf())
}

/// `a/./b/../c` as `a/c`, without touching the file system (paths stay as the user
/// wrote them, relative where they were relative).
fn normalize(path: &Path) -> PathBuf {
    let mut out: Vec<Component<'_>> = Vec::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir if matches!(out.last(), Some(Component::Normal(_))) => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out.iter().collect()
}

impl Loader<'_> {
    /// Reads the files of an `include` array, in order, before the including file's own
    /// sections.
    pub(super) fn includes(
        &mut self,
        m: &mut Manifest,
        value: Spanned<DeValue<'_>>,
        seen: &mut Seen,
    ) {
        let span = self.at(value.span());
        let items = match value.into_inner() {
            DeValue::Array(items) => items,
            other => {
                self.err(
                    Diagnostic::new(
                        "include",
                        span,
                        format!(
                            "`include` must be an array of paths, found {}",
                            de_type(&other)
                        ),
                    )
                    .with_help("write e.g. `include = [\"common/stages.toml\"]`"),
                );
                return;
            }
        };
        for item in items {
            let item_span = self.at(item.span());
            match item.into_inner() {
                DeValue::String(rel) if !rel.trim().is_empty() => {
                    self.include(m, &rel, item_span, seen)
                }
                other => self.err(Diagnostic::new(
                    "include",
                    item_span,
                    format!("`include` lists file paths, found {}", de_type(&other)),
                )),
            }
        }
    }

    /// Reads one included file, `rel` to the file being read.
    fn include(&mut self, m: &mut Manifest, rel: &str, span: Range<usize>, seen: &mut Seen) {
        let including = &self
            .files
            .chain
            .last()
            .expect("the manifest is in the chain")
            .path;
        let path = including.parent().unwrap_or(Path::new("")).join(rel);
        let shown = normalize(&path);
        let id = identity(&path);
        if let Some(start) = self.files.chain.iter().position(|l| l.id == id) {
            let cycle: Vec<String> = self.files.chain[start..]
                .iter()
                .map(|l| l.shown.display().to_string())
                .chain([shown.display().to_string()])
                .collect();
            self.err(Diagnostic::new(
                "include",
                span,
                format!("files include each other: {}", cycle.join(" -> ")),
            ));
            return;
        }
        if self.files.read.contains(&id) {
            return; // read already, through another file
        }
        let text = match std::fs::metadata(&path) {
            Ok(meta) if !meta.is_file() => Err(format!("`{}` is not a file", shown.display())),
            Ok(_) => std::fs::read_to_string(&path)
                .map_err(|e| format!("cannot read included file `{}`: {e}", shown.display())),
            Err(e) => Err(format!(
                "cannot read included file `{}`: {e}",
                shown.display()
            )),
        };
        let text = match text {
            Ok(text) => text,
            Err(message) => {
                self.err(
                    Diagnostic::new("include", span, message)
                        .with_help("include paths are relative to the file that includes them"),
                );
                return;
            }
        };
        let base = match self.included.last() {
            Some(f) => f.base + f.text.len() + 1,
            None => self.source.len() + 1,
        };
        self.included.push(SourceFile {
            path: shown.clone(),
            text: text.clone(),
            base,
            included_at: span,
        });
        self.files.read.push(id.clone());
        self.files.chain.push(Link { id, path, shown });
        let outer = (self.base, self.in_include);
        (self.base, self.in_include) = (base, true);
        self.file(m, &text, seen);
        (self.base, self.in_include) = outer;
        self.files.chain.pop();
    }

    /// A name defined in two places: reported at the second, naming both.
    pub(super) fn defined_twice(
        &self,
        what: &str,
        key: &str,
        first: Range<usize>,
        second: Range<usize>,
    ) -> Diagnostic {
        Diagnostic::new(
            key,
            second.clone(),
            format!(
                "{what} is defined twice: at {} and at {}",
                self.location(first.start),
                self.location(second.start)
            ),
        )
        .with_related(first, "first defined here")
        .with_help("define it in one file; manifests that need it include that file")
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::manifest::tests::errors_at;
    use crate::manifest::{LoadError, Manifest};
    use crate::testkit;

    /// A folder of files: (relative path, text).
    fn project(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (path, text) in files {
            let path = dir.path().join(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }
        dir
    }

    fn load(dir: &Path, path: &str) -> Result<Manifest, String> {
        Manifest::load(&dir.join(path), &testkit::registry()).map_err(|e| match e {
            LoadError::Invalid(e) => e.render(),
            e => e.to_string(),
        })
    }

    fn stage_names(m: &Manifest) -> Vec<&str> {
        m.stages.iter().map(|s| s.name.as_str()).collect()
    }

    const SRC_A: &str = "[stages.a]\nkind = \"src\"\n";

    #[test]
    fn included_stages_come_first_in_include_order() {
        let dir = project(&[
            (
                "m.toml",
                "include = [\"common/one.toml\", \"common/two.toml\"]\n\
                 [flow]\nname = \"m\"\n[stages.own]\nkind = \"table\"\nfrom = [\"a\", \"b\", \"c\"]\n",
            ),
            ("common/one.toml", "include = [\"three.toml\"]\n[stages.b]\nkind = \"src\"\n"),
            ("common/two.toml", "include = [\"three.toml\"]\n[stages.c]\nkind = \"src\"\n"),
            ("common/three.toml", SRC_A),
        ]);
        let m = load(dir.path(), "m.toml").unwrap();
        // three.toml is read once, where one.toml includes it.
        assert_eq!(stage_names(&m), ["a", "b", "c", "own"]);
        assert_eq!(m.included.len(), 3);
        assert!(m.included[0].path.ends_with("common/one.toml"));
        assert!(m.included[1].path.ends_with("common/three.toml"));
    }

    #[test]
    fn errors_point_into_the_included_file() {
        let dir = project(&[
            (
                "m.toml",
                "include = [\"common/x.toml\"]\n[flow]\nname = \"m\"\n",
            ),
            (
                "common/x.toml",
                "# shared\n[stages.a]\nkind = \"src\"\nn = 0\n",
            ),
        ]);
        let err = load(dir.path(), "m.toml").unwrap_err();
        let at = dir.path().join("common/x.toml:4:5");
        assert!(err.contains(&format!("at {}", at.display())), "{err}");
        assert!(err.contains("`n` must be at least 1"), "{err}");
        // The snippet is the included file's line, and the note says who included it.
        assert!(err.contains("4 │ n = 0"), "{err}");
        let from = dir.path().join("m.toml:1:12");
        assert!(
            err.contains(&format!("included from {}", from.display())),
            "{err}"
        );
    }

    #[test]
    fn a_name_defined_twice_names_both_places() {
        let dir = project(&[
            (
                "m.toml",
                "include = [\"common/x.toml\"]\n[flow]\nname = \"m\"\n\n[stages.a]\nkind = \"src\"\n\
                 [models.m1]\n[profile.p]\n\"a.n\" = 2\n",
            ),
            ("common/x.toml", "[models.m1]\n\n[stages.a]\nkind = \"src\"\n[profile.p]\n\"a.n\" = 3\n"),
        ]);
        let err = load(dir.path(), "m.toml").unwrap_err();
        let common = dir.path().join("common/x.toml");
        let manifest = dir.path().join("m.toml");
        for (what, first, second) in [
            ("stage `a`", "3:9", "5:9"),
            ("`[models.m1]`", "1:9", "7:9"),
            ("`a.n` in profile `p`", "6:1", "9:1"),
        ] {
            let expected = format!(
                "{what} is defined twice: at {}:{first} and at {}:{second}",
                common.display(),
                manifest.display()
            );
            assert!(err.contains(&expected), "{expected}\n{err}");
        }
        assert!(err.contains("first defined here"), "{err}");
    }

    #[test]
    fn the_manifest_overrides_included_stages_in_its_profiles() {
        let dir = project(&[
            (
                "m.toml",
                "include = [\"x.toml\"]\n[flow]\nname = \"m\"\n[profile.tiny]\n\"a.n\" = 2\n\
                 [profile.cpu]\n",
            ),
            (
                "x.toml",
                "[stages.a]\nkind = \"src\"\n[stages.b]\nkind = \"src\"\n\
                 [profile.tiny]\n\"b.n\" = 3\n[profile.small]\n\"b.n\" = 4\n",
            ),
        ]);
        let m = load(dir.path(), "m.toml").unwrap();
        // The manifest declares tiny and cpu; x.toml's small is for manifests with one.
        assert_eq!(m.profiles.keys().collect::<Vec<_>>(), ["cpu", "tiny"]);
        let tiny: Vec<&str> = m.profiles["tiny"]
            .iter()
            .map(|o| o.stage.as_str())
            .collect();
        assert_eq!(tiny, ["b", "a"]);
        let b = &m.profiles["tiny"][0];
        assert!(m.location(b.value.span.start).ends_with("x.toml:6:9"));
    }

    /// Each row: files (the manifest is `m.toml`), and a part of the error.
    #[test]
    fn include_problems_are_reported_where_they_are_written() {
        let flow = "[flow]\nname = \"m\"\n";
        let rows: Vec<(Vec<(&str, String)>, &str)> = vec![
            (
                vec![(
                    "m.toml",
                    format!("include = [\"nope.toml\"]\n{flow}{SRC_A}"),
                )],
                "cannot read included file",
            ),
            (
                vec![("m.toml", format!("include = [\".\"]\n{flow}{SRC_A}"))],
                "is not a file",
            ),
            (
                vec![("m.toml", format!("include = \"x.toml\"\n{flow}{SRC_A}"))],
                "`include` must be an array of paths, found a string",
            ),
            (
                vec![("m.toml", format!("include = [3]\n{flow}{SRC_A}"))],
                "`include` lists file paths, found an integer",
            ),
            (
                vec![
                    ("m.toml", format!("include = [\"x.toml\"]\n{flow}{SRC_A}")),
                    ("x.toml", "include = [\"y.toml\"]\n".to_string()),
                    ("y.toml", "include = [\"x.toml\"]\n".to_string()),
                ],
                "files include each other: ",
            ),
            (
                vec![("m.toml", format!("include = [\"m.toml\"]\n{flow}{SRC_A}"))],
                "files include each other: ",
            ),
            (
                vec![
                    ("m.toml", format!("include = [\"x.toml\"]\n{flow}")),
                    ("x.toml", format!("{flow}{SRC_A}")),
                ],
                "`[flow]` belongs to the manifest, not to a file it includes",
            ),
            (
                vec![
                    ("m.toml", format!("include = [\"x.toml\"]\n{flow}")),
                    ("x.toml", "[stages.a\n".to_string()),
                ],
                "invalid TOML",
            ),
            (
                vec![
                    (
                        "m.toml",
                        format!("include = [\"x.toml\"]\n{flow}[profile.tiny]\n"),
                    ),
                    ("x.toml", format!("{SRC_A}[profile.tiyn]\n\"a.n\" = 2\n")),
                ],
                "did you mean `tiny`?",
            ),
            (
                vec![
                    (
                        "m.toml",
                        format!("include = [\"x.toml\"]\n{flow}[profile.tiny]\n"),
                    ),
                    (
                        "x.toml",
                        format!("{SRC_A}[profile.tiny]\n\"flow.seed\" = 2\n"),
                    ),
                ],
                "`flow.seed` can be overridden by the manifest's own profiles only",
            ),
            (
                vec![
                    ("m.toml", format!("include = [\"x.toml\"]\n{flow}")),
                    (
                        "x.toml",
                        "[stages.t]\nkind = \"table\"\nfrom = \"nope\"\n".to_string(),
                    ),
                ],
                "no stage named `nope`",
            ),
            (
                vec![
                    ("m.toml", format!("{flow}include = [\"x.toml\"]\n{SRC_A}")),
                    ("x.toml", SRC_A.to_string()),
                ],
                "`include` is a top-level key",
            ),
        ];
        for (files, expected) in rows {
            let files: Vec<(&str, &str)> = files.iter().map(|(p, t)| (*p, t.as_str())).collect();
            let dir = project(&files);
            let err = load(dir.path(), "m.toml").unwrap_err();
            assert!(err.contains(expected), "{files:?}: {err}");
        }
    }

    #[test]
    fn a_cycle_shows_the_chain() {
        let dir = project(&[
            ("m.toml", "include = [\"a/x.toml\"]\n[flow]\nname = \"m\"\n"),
            ("a/x.toml", "include = [\"../b/y.toml\"]\n"),
            (
                "b/y.toml",
                "include = [\"../a/x.toml\"]\n[stages.s]\nkind = \"src\"\n",
            ),
        ]);
        let err = load(dir.path(), "m.toml").unwrap_err();
        let d = dir.path().display();
        let chain = format!("{d}/a/x.toml -> {d}/b/y.toml -> {d}/a/x.toml");
        assert!(err.contains(&chain), "{chain}\n{err}");
    }

    /// A manifest without includes reads as before: included files change no span.
    #[test]
    fn spans_of_the_manifest_itself_are_offsets_in_it() {
        let text = "[flow]\nname = \"t\"\n[stages.s]\nkind = \"src\"\nn = 0\n";
        let err = errors_at(Path::new("t.toml"), text);
        assert!(err.contains("t.toml:5:5"), "{err}");
    }
}
