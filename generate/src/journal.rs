//! An append-only journal of finished requests, shared by every run, every
//! backend and every machine that shares the cache: a folder of JSON-lines
//! files, one `{"key", "completion"}` per line. A request answered once is
//! never generated (or paid for) again.
//!
//! # Segments: one file per writer
//!
//! The cache may live on a file system shared by several machines (NFS,
//! Lustre), where appends from several hosts to one file are not atomic
//! (each client computes "the end" itself, so lines overwrite or interleave)
//! and `flock` may be node-local, or missing. So no two writers ever append
//! to one file, and correctness never depends on a lock:
//!
//! - Each open [`Journal`] appends only to its own *segment*,
//!   `<dir>/journal.<host>.<pid>.<nanos>-<random>.jsonl`, created (with
//!   `create_new`) on its first append; the name is unique across hosts and
//!   processes and tells who writes it. Each batch is one write and one fsync,
//!   so an answer the caller got is durable.
//! - `<dir>/journal.jsonl` is the compacted *base*; before segments it was the
//!   only file, so an old cache keeps working unchanged.
//! - Opening reads the union: the base, then every segment by name, the last
//!   answer per key winning. A line that is not UTF-8 or not a journal line
//!   (a torn last line after kill -9) is skipped and counted
//!   ([`Journal::skipped`]) and every later answer is still read. (The
//!   segments are read before the base: a compaction renames its new base in
//!   before it deletes the segments it merged, so a segment that vanishes
//!   while it is being read is in the base read after it.)
//! - Opening takes no lock and creates nothing but the folder.
//!
//! # Compaction
//!
//! [`Journal::compact`] (run by `flow gc`) merges the base and every
//! *finished* segment into a new base (a temporary file of its own, fsynced,
//! renamed over the base, the folder fsynced), only readable lines, the last
//! answer per key, then deletes the segments it merged: a crash between the
//! rename and the deletes leaves answers twice, which is harmless. A segment
//! is finished when its writer is on this host and its process is gone
//! (`kill(pid, 0)` says `ESRCH`), or, for a segment of another host (whose
//! processes cannot be seen from here) or one whose name does not parse, when
//! it has not changed for a grace period (an hour by default, as the cache's
//! garbage collection; a writer fsyncs, and so touches its segment, with every
//! batch). Live segments are left alone (and still read).
//!
//! Two compactions on one host are kept apart by an exclusive try-lock on
//! `<dir>/journal.lock` (taken by compaction only): one that finds it held
//! leaves the journal alone ([`CompactReport::locked`]; an older flow that
//! still appends to `journal.jsonl` holds it shared, which keeps compaction
//! off its file too). Where the lock cannot be taken (no locks on the file
//! system) or does not reach (another host), compaction proceeds anyway: the
//! worst case of two compactions at once is a lost merge, one's new base
//! renamed over the other's after both deleted segments, so answers are
//! generated again; never a corrupt or wrong answer, since each compaction
//! writes its own temporary file and a rename is atomic.
//!
//! A writer whose segment was merged away under it anyway (a `--grace`
//! shorter than its pauses, a host name shared by two machines, a process in
//! another pid namespace) notices before its next append (or when the append
//! fails, NFS's stale handle) and starts a new segment; at most the batch in
//! flight at that moment is lost, to be generated again.
//!
//! Secrets given with [`Journal::with_secrets`] (the API key) are cut out of
//! every answer ([`crate::scrub_secrets`]) before it is written.

use std::collections::HashMap;
use std::fs::{File, OpenOptions, TryLockError};
use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::{Completion, GenError, Generator, Request, Result, Sink, Stats};

/// The compacted base (before segments, the whole journal).
const JOURNAL_FILE: &str = "journal.jsonl";
/// Taken by compaction only.
const LOCK_FILE: &str = "journal.lock";
/// A segment is `journal.<host>.<pid>.<stamp>.jsonl`.
const SEGMENT_PREFIX: &str = "journal.";
const SEGMENT_SUFFIX: &str = ".jsonl";
/// A compaction's temporary file is `journal.jsonl.compact-tmp.<host>.<pid>.<stamp>`
/// (older flows used the bare prefix).
const COMPACT_TMP: &str = "journal.jsonl.compact-tmp";

/// The key of a request: blake3 over the generator identity and the request.
pub fn request_key(identity: &str, request: &Request) -> String {
    let body = serde_json::json!({"v": 1, "generator": identity, "request": request});
    blake3::hash(body.to_string().as_bytes())
        .to_hex()
        .to_string()
}

#[derive(Serialize, Deserialize)]
struct Line {
    key: String,
    completion: Completion,
}

pub struct Journal {
    dir: PathBuf,
    entries: HashMap<String, Completion>,
    /// This journal's own segment, created on the first append.
    segment: Option<Segment>,
    /// Cut out of every answer before it is written, longest first.
    secrets: Vec<String>,
    /// Unreadable lines met when the journal was opened.
    skipped: u64,
    /// Lines appended by this process.
    pub appended: u64,
}

/// What [`Journal::compact`] did (or, for a dry run, would do) to one journal
/// folder: its base and the segments it merged.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CompactReport {
    /// Non-empty lines in the base and the finished segments.
    pub lines: u64,
    /// Answers kept (one line per key).
    pub kept: u64,
    /// Lines dropped as unreadable (not UTF-8, not a journal line, torn).
    pub skipped: u64,
    /// Readable lines dropped because a later line answers the same key.
    pub superseded: u64,
    /// Bytes of the base and the finished segments.
    pub bytes_before: u64,
    /// Bytes of the new base.
    pub bytes_after: u64,
    /// Finished segments merged into the base and deleted (or that would be).
    pub segments_merged: u64,
    /// Segments still being written (their process runs on this host, or they
    /// changed within the grace period): left alone, still read.
    pub segments_live: u64,
    /// Another compaction held `journal.lock`: nothing was done.
    pub locked: bool,
    /// The base was rewritten (false for a dry run, a locked journal, or one
    /// with nothing to drop or merge).
    pub rewritten: bool,
}

impl CompactReport {
    /// Lines dropped (or that would be).
    pub fn dropped(&self) -> u64 {
        self.skipped + self.superseded
    }
}

fn io(context: String) -> impl FnOnce(std::io::Error) -> GenError {
    move |source| GenError::Io { context, source }
}

/// A file that is gone, or (NFS) was deleted by another host while open:
/// merged by a compaction, so the base read after it holds its answers.
fn vanished(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::NotFound | std::io::ErrorKind::StaleNetworkFileHandle
    )
}

/// What [`scan`] read of one file.
#[derive(Clone, Copy, Default)]
struct Scanned {
    /// Non-empty lines.
    lines: u64,
    /// Unreadable lines.
    skipped: u64,
    /// Bytes read.
    bytes: u64,
}

/// Reads every line of a journal file, raw bytes per line so that one bad line
/// costs only itself: `each` gets every readable line (in file order) with
/// its bytes (without the newline).
fn scan(reader: impl Read, mut each: impl FnMut(Line, &[u8])) -> std::io::Result<Scanned> {
    let mut reader = BufReader::new(reader);
    let mut buf = Vec::new();
    let mut s = Scanned::default();
    loop {
        buf.clear();
        let n = reader.read_until(b'\n', &mut buf)?;
        if n == 0 {
            break;
        }
        s.bytes += n as u64;
        let mut raw = buf.as_slice();
        while let Some((b'\n' | b'\r', rest)) = raw.split_last() {
            raw = rest;
        }
        if raw.iter().all(u8::is_ascii_whitespace) {
            continue; // a fence, or an empty line: nothing lost
        }
        s.lines += 1;
        // `from_slice` rejects invalid UTF-8 as well as bad JSON.
        match serde_json::from_slice::<Line>(raw) {
            Ok(line) => each(line, raw),
            Err(_) => s.skipped += 1,
        }
    }
    Ok(s)
}

/// Scans the file at `path`; `None` when it vanished (see [`vanished`]),
/// possibly after `each` got some of its lines.
fn scan_path(path: &Path, each: impl FnMut(Line, &[u8])) -> Result<Option<Scanned>> {
    match File::open(path).and_then(|f| scan(f, each)) {
        Ok(s) => Ok(Some(s)),
        Err(e) if vanished(&e) => Ok(None),
        Err(e) => Err(io(format!("read {}", path.display()))(e)),
    }
}

/// `text` with every secret cut out ([`crate::scrub_secrets`]), `None` when
/// it holds none.
fn scrub(secrets: &[String], text: &str) -> Option<String> {
    if !secrets.iter().any(|s| text.contains(s.as_str())) {
        return None;
    }
    let secrets: Vec<&str> = secrets.iter().map(String::as_str).collect();
    Some(crate::scrub_secrets(text, &secrets))
}

/// Who wrote a file named `<host>.<pid>.<stamp>` (the part of a segment's or
/// a compaction's temporary file's name that follows its prefix).
fn parse_writer(rest: &str) -> Option<(&str, u32)> {
    let mut parts = rest.split('.');
    let (host, pid, stamp) = (parts.next()?, parts.next()?, parts.next()?);
    let host_ok = !host.is_empty() && host.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    let pid: u32 = pid
        .parse()
        .ok()
        .filter(|&p| p > 0 && p <= i32::MAX as u32)?;
    (host_ok && !stamp.is_empty() && parts.next().is_none()).then_some((host, pid))
}

/// The part of a segment's name between `journal.` and `.jsonl`; `None` for
/// any other file (the base, the lock, temporary files).
fn segment_rest(name: &str) -> Option<&str> {
    if name == JOURNAL_FILE {
        return None;
    }
    name.strip_prefix(SEGMENT_PREFIX)?
        .strip_suffix(SEGMENT_SUFFIX)
        .filter(|rest| !rest.is_empty())
}

/// The part of a compaction's temporary file's name after its prefix (`""`
/// for an older flow's, which tells no writer); `None` for any other file.
fn compact_tmp_rest(name: &str) -> Option<&str> {
    let rest = name.strip_prefix(COMPACT_TMP)?;
    if rest.is_empty() {
        return Some(rest);
    }
    rest.strip_prefix('.')
}

/// `name` cut down to `[A-Za-z0-9-]` (at most 63 characters), for a file name
/// that must parse back.
fn sanitize_host(name: &str) -> String {
    let clean: String = name
        .trim()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .take(63)
        .collect();
    if clean.is_empty() {
        "unknown-host".to_string()
    } else {
        clean
    }
}

/// This machine's name, sanitized ([`sanitize_host`]).
fn host_name() -> &'static str {
    static HOST: OnceLock<String> = OnceLock::new();
    HOST.get_or_init(|| {
        let raw = sys::hostname()
            .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
            .or_else(|| std::env::var("HOSTNAME").ok())
            .or_else(|| std::env::var("COMPUTERNAME").ok())
            .unwrap_or_default();
        sanitize_host(&raw)
    })
}

/// `<host>.<pid>.<unix nanos>-<random>`: who writes a new file, unique.
fn writer_stamp() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!(
        "{}.{}.{nanos}-{:08x}",
        host_name(),
        std::process::id(),
        rand::random::<u32>()
    )
}

/// Whether the writer of a file is done with it: `writer` is its (host, pid)
/// when its name tells them. On this host, whether the process is gone; else
/// (or where that cannot be told) whether the file has not changed for `grace`.
fn finished(
    writer: Option<(&str, u32)>,
    modified: Option<SystemTime>,
    grace: Duration,
    now: SystemTime,
) -> bool {
    if let Some((host, pid)) = writer {
        if host == host_name() {
            if let Some(alive) = sys::process_alive(pid) {
                return !alive;
            }
        }
    }
    if grace.is_zero() {
        return true;
    }
    // A time in the future (clocks of two hosts) is young.
    modified
        .and_then(|m| now.duration_since(m).ok())
        .is_some_and(|age| age >= grace)
}

/// The operating system calls the journal needs (declared here rather than
/// through the `libc` crate, which flow-generate does not depend on).
#[cfg(unix)]
mod sys {
    /// Whether process `pid` of this host runs (`kill(pid, 0)`; a process of
    /// another user, `EPERM`, runs too). `None` when it cannot be told.
    pub fn process_alive(pid: u32) -> Option<bool> {
        if pid == std::process::id() {
            return Some(true);
        }
        // 0 and negative pids name process groups.
        let pid = i32::try_from(pid).ok().filter(|&p| p > 0)?;
        // SAFETY: signal 0 sends nothing; it only checks that the process exists.
        if unsafe { libc::kill(pid, 0) } == 0 {
            return Some(true);
        }
        match std::io::Error::last_os_error().raw_os_error() {
            Some(libc::ESRCH) => Some(false),
            Some(_) => Some(true),
            None => None,
        }
    }

    pub fn hostname() -> Option<String> {
        let mut buf = [0u8; 256];
        // SAFETY: the buffer is writable for its whole length; the name may
        // come back unterminated when cut, so the length is found below.
        if unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } != 0 {
            return None;
        }
        let len = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
        Some(String::from_utf8_lossy(&buf[..len]).into_owned())
    }
}

#[cfg(not(unix))]
mod sys {
    pub fn process_alive(pid: u32) -> Option<bool> {
        (pid == std::process::id()).then_some(true)
    }

    pub fn hostname() -> Option<String> {
        None
    }
}

/// Makes the folder's entries (a new or renamed file) durable.
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    File::open(dir)?.sync_all()?;
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

/// The files of one journal folder.
#[derive(Default)]
struct Listing {
    /// Whether the base exists.
    base: bool,
    /// Segment file names, sorted.
    segments: Vec<String>,
    /// Compactions' temporary files.
    tmps: Vec<String>,
}

fn list(dir: &Path) -> Result<Listing> {
    let mut listing = Listing::default();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(listing),
        Err(e) => return Err(io(format!("list {}", dir.display()))(e)),
    };
    for e in entries {
        let e = e.map_err(io(format!("list {}", dir.display())))?;
        let Ok(name) = e.file_name().into_string() else {
            continue;
        };
        if name == JOURNAL_FILE {
            listing.base = true;
        } else if segment_rest(&name).is_some() {
            listing.segments.push(name);
        } else if compact_tmp_rest(&name).is_some() {
            listing.tmps.push(name);
        }
    }
    listing.segments.sort();
    listing.tmps.sort();
    Ok(listing)
}

/// The file an open journal appends to.
struct Segment {
    path: PathBuf,
    file: File,
    /// (device, inode) at creation, to tell when the name no longer leads here.
    id: (u64, u64),
}

#[cfg(unix)]
fn file_id(m: &std::fs::Metadata) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    (m.dev(), m.ino())
}

#[cfg(not(unix))]
fn file_id(_: &std::fs::Metadata) -> (u64, u64) {
    (0, 0)
}

impl Segment {
    /// A new segment of this process in `dir`.
    fn create(dir: &Path) -> Result<Segment> {
        let mut tries = 0;
        loop {
            let path = dir.join(format!(
                "{SEGMENT_PREFIX}{}{SEGMENT_SUFFIX}",
                writer_stamp()
            ));
            match OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(file) => {
                    let id = file
                        .metadata()
                        .map(|m| file_id(&m))
                        .map_err(io(format!("stat {}", path.display())))?;
                    // The new name durable with the first answers fsynced in it.
                    if let Err(e) = sync_dir(dir) {
                        tracing::debug!("journal {}: cannot fsync the folder ({e})", dir.display());
                    }
                    return Ok(Segment { path, file, id });
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && tries < 8 => {
                    tries += 1;
                }
                Err(e) => return Err(io(format!("create {}", path.display()))(e)),
            }
        }
    }

    /// Whether the name still leads to the file written (a compaction that
    /// took the segment for finished has not merged it away).
    fn still_there(&self) -> bool {
        std::fs::metadata(&self.path).is_ok_and(|m| file_id(&m) == self.id)
    }

    fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.file.write_all(bytes)?;
        self.file.sync_data()
    }
}

impl Journal {
    /// Opens the journal in `dir` (creating the folder): reads the base and
    /// every segment. Takes no lock and creates no file; the first append
    /// creates this journal's segment.
    pub fn open(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(io(format!("create {}", dir.display())))?;
        let listing = list(dir)?;
        let (mut lines, mut skipped) = (0u64, 0u64);
        // The segments first, the base last (see the module docs): the answer
        // per key is the base's unless a segment has one, the last by name.
        let mut newer: HashMap<String, Completion> = HashMap::new();
        for name in &listing.segments {
            let scanned = scan_path(&dir.join(name), |l, _| {
                newer.insert(l.key, l.completion);
            })?;
            if let Some(s) = scanned {
                lines += s.lines;
                skipped += s.skipped;
            }
        }
        let mut entries = HashMap::new();
        let base = dir.join(JOURNAL_FILE);
        if let Some(s) = scan_path(&base, |l, _| {
            entries.insert(l.key, l.completion);
        })? {
            lines += s.lines;
            skipped += s.skipped;
        }
        entries.extend(newer);
        if skipped > 0 {
            tracing::warn!(
                "journal {}: skipped {skipped} unreadable lines of {lines} (`flow gc` compacts it)",
                dir.display()
            );
        }
        Ok(Journal {
            dir: dir.to_path_buf(),
            entries,
            segment: None,
            secrets: Vec::new(),
            skipped,
            appended: 0,
        })
    }

    /// The journal's files in the order their answers count (the last per
    /// key wins): the base, if any, then the segments by name.
    pub fn files(dir: &Path) -> Result<Vec<PathBuf>> {
        let listing = list(dir)?;
        Ok(listing
            .base
            .then(|| dir.join(JOURNAL_FILE))
            .into_iter()
            .chain(listing.segments.iter().map(|n| dir.join(n)))
            .collect())
    }

    /// Secrets (an API key) to cut out of every answer before it is journaled
    /// or handed on; answers already in the journal are scrubbed in memory too.
    /// Empty strings are ignored.
    pub fn with_secrets<S: Into<String>>(mut self, secrets: impl IntoIterator<Item = S>) -> Self {
        self.secrets.extend(
            secrets
                .into_iter()
                .map(Into::into)
                .filter(|s| !s.is_empty()),
        );
        // Longest first, so a secret holding another is cut out whole.
        self.secrets
            .sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        self.secrets.dedup();
        for c in self.entries.values_mut() {
            if let Some(text) = scrub(&self.secrets, &c.text) {
                c.text = text;
            }
        }
        self
    }

    /// `completion` with the secrets cut out.
    fn scrubbed(&self, mut completion: Completion) -> Completion {
        if let Some(text) = scrub(&self.secrets, &completion.text) {
            completion.text = text;
        }
        completion
    }

    pub fn get(&self, key: &str) -> Option<&Completion> {
        self.entries.get(key)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The journal's folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The compacted base, `<dir>/journal.jsonl` (which need not exist); this
    /// journal appends to its own [`Journal::segment`].
    pub fn path(&self) -> PathBuf {
        self.dir.join(JOURNAL_FILE)
    }

    /// The segment this journal appends to, once it has appended.
    pub fn segment(&self) -> Option<&Path> {
        self.segment.as_ref().map(|s| s.path.as_path())
    }

    /// Lines that could not be read when the journal was opened (not UTF-8,
    /// not a journal line, torn); the answers after them were read.
    pub fn skipped(&self) -> u64 {
        self.skipped
    }

    pub fn append(&mut self, key: &str, completion: &Completion) -> Result<()> {
        self.append_many(&[(key, completion)])
    }

    /// Appends several lines with one write and one fsync: completions that
    /// arrive together become durable together. Secrets are cut out first.
    pub fn append_many(&mut self, items: &[(&str, &Completion)]) -> Result<()> {
        let scrubbed: Vec<Completion> = items
            .iter()
            .map(|(_, c)| self.scrubbed((*c).clone()))
            .collect();
        let items: Vec<(&str, &Completion)> =
            items.iter().map(|(k, _)| *k).zip(&scrubbed).collect();
        self.append_scrubbed(&items)
    }

    fn append_scrubbed(&mut self, items: &[(&str, &Completion)]) -> Result<()> {
        if items.is_empty() {
            return Ok(());
        }
        let mut buf = String::new();
        for (key, completion) in items {
            let line = serde_json::to_string(&Line {
                key: key.to_string(),
                completion: (*completion).clone(),
            })
            .map_err(GenError::other)?;
            buf.push_str(&line);
            buf.push('\n');
        }
        self.write(buf.as_bytes())?;
        for (key, completion) in items {
            self.entries.insert(key.to_string(), (*completion).clone());
        }
        self.appended += items.len() as u64;
        Ok(())
    }

    /// Writes whole lines to this journal's segment and fsyncs them, starting
    /// a new segment when there is none yet, when a compaction merged the
    /// current one away, or (once) when writing to it fails: the old one may
    /// be gone (NFS: a stale handle) or end in a torn line.
    fn write(&mut self, bytes: &[u8]) -> Result<()> {
        if let Some(seg) = &self.segment {
            if !seg.still_there() {
                tracing::warn!(
                    "journal segment {} was merged away while open; starting a new one",
                    seg.path.display()
                );
                self.segment = None;
            }
        }
        let mut retried = self.segment.is_none();
        loop {
            let mut seg = match self.segment.take() {
                Some(seg) => seg,
                None => Segment::create(&self.dir)?,
            };
            match seg.write(bytes) {
                Ok(()) => {
                    self.segment = Some(seg);
                    return Ok(());
                }
                // Never append after a write that may have left half a line.
                Err(e) if retried => {
                    return Err(io(format!("append to {}", seg.path.display()))(e))
                }
                Err(e) => {
                    tracing::warn!(
                        "journal: append to {} failed ({e}); starting a new segment",
                        seg.path.display()
                    );
                    retried = true;
                }
            }
        }
    }

    /// Merges the base `<dir>/journal.jsonl` and every finished segment into
    /// a new base with only readable lines, the last answer per key,
    /// atomically, then deletes the merged segments (see the module docs).
    /// A segment of another host (or one whose name does not parse) counts as
    /// finished once unchanged for `grace` (`flow gc --grace`, an hour by
    /// default); live segments are left alone ([`CompactReport::segments_live`]).
    /// A journal with nothing to drop or merge is not rewritten.
    pub fn compact(dir: &Path, grace: Duration) -> Result<CompactReport> {
        compact_in(dir, false, grace)
    }

    /// What [`Journal::compact`] would do, changing (and creating) nothing.
    pub fn compact_dry_run(dir: &Path, grace: Duration) -> Result<CompactReport> {
        compact_in(dir, true, grace)
    }

    /// Compacts (or, with `dry_run`, inspects) every journal (a base or a
    /// segment) in the folders under `root` (e.g. `<cache>/journal`), in path
    /// order; each is reported under its base's path. A missing `root` has none.
    pub fn compact_all(
        root: &Path,
        dry_run: bool,
        grace: Duration,
    ) -> Result<Vec<(PathBuf, CompactReport)>> {
        let mut dirs = Vec::new();
        let mut stack = vec![root.to_path_buf()];
        while let Some(dir) = stack.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            let mut journal = false;
            for e in entries.flatten() {
                let file_type = e.file_type();
                if file_type.as_ref().is_ok_and(|t| t.is_dir()) {
                    stack.push(e.path());
                } else if file_type.is_ok_and(|t| t.is_file()) {
                    let name = e.file_name();
                    let name = name.to_string_lossy();
                    journal |= name == JOURNAL_FILE || segment_rest(&name).is_some();
                }
            }
            if journal {
                dirs.push(dir);
            }
        }
        dirs.sort();
        dirs.into_iter()
            .map(|d| compact_in(&d, dry_run, grace).map(|r| (d.join(JOURNAL_FILE), r)))
            .collect()
    }
}

/// Takes `<dir>/journal.lock` exclusively for a compaction: `None` when
/// another holds it; `Some(None)` when it cannot be had at all (no locks on
/// this file system): the compaction proceeds unlocked.
fn lock_for_compaction(dir: &Path) -> Option<Option<File>> {
    let path = dir.join(LOCK_FILE);
    let file = match OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)
    {
        Ok(f) => f,
        Err(e) => {
            tracing::warn!(
                "journal {}: cannot open the lock ({e}); compacting unlocked",
                dir.display()
            );
            return Some(None);
        }
    };
    match file.try_lock() {
        Ok(()) => Some(Some(file)),
        Err(TryLockError::WouldBlock) => None,
        Err(TryLockError::Error(e)) => {
            tracing::warn!(
                "journal {}: cannot lock ({e}); compacting unlocked",
                dir.display()
            );
            Some(None)
        }
    }
}

fn compact_in(dir: &Path, dry_run: bool, grace: Duration) -> Result<CompactReport> {
    let path = dir.join(JOURNAL_FILE);
    let quick = list(dir)?;
    if !quick.base && quick.segments.is_empty() {
        return Ok(CompactReport::default());
    }
    // A dry run reads only: no lock (which it would create), nothing written.
    let _lock = if dry_run {
        None
    } else {
        match lock_for_compaction(dir) {
            Some(lock) => lock,
            None => {
                return Ok(CompactReport {
                    locked: true,
                    ..CompactReport::default()
                })
            }
        }
    };
    let listing = list(dir)?;
    let now = SystemTime::now();
    let modified = |name: &str| {
        std::fs::metadata(dir.join(name))
            .and_then(|m| m.modified())
            .ok()
    };
    let mut report = CompactReport::default();
    if !dry_run {
        // What crashed compactions left (not another's in progress).
        for name in &listing.tmps {
            let writer = compact_tmp_rest(name).and_then(parse_writer);
            if finished(writer, modified(name), grace, now) {
                let _ = std::fs::remove_file(dir.join(name));
            }
        }
    }
    // The finished segments, read before the base (see the module docs).
    let mut merged: Vec<&String> = Vec::new();
    let mut segment_lines: Vec<(String, Vec<u8>)> = Vec::new();
    let mut read = Scanned::default();
    let mut add = |s: Scanned| {
        read.lines += s.lines;
        read.skipped += s.skipped;
        read.bytes += s.bytes;
    };
    for name in &listing.segments {
        let writer = segment_rest(name).and_then(parse_writer);
        if !finished(writer, modified(name), grace, now) {
            report.segments_live += 1;
            continue;
        }
        let mut lines = Vec::new();
        // One that vanished was merged by another compaction (another host's).
        if let Some(s) = scan_path(&dir.join(name), |l, raw| lines.push((l.key, raw.to_vec())))? {
            add(s);
            segment_lines.extend(lines);
            merged.push(name);
        }
    }
    // Last answer per key, at the place of the key's first line: the base's
    // lines first, then the segments' by name.
    let mut order: Vec<Vec<u8>> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    let mut keep = |key: String, raw: Vec<u8>| match index.get(&key) {
        Some(&i) => order[i] = raw,
        None => {
            index.insert(key, order.len());
            order.push(raw);
        }
    };
    let mut base_bytes = 0;
    if let Some(s) = scan_path(&path, |l, raw| keep(l.key, raw.to_vec()))? {
        base_bytes = s.bytes;
        add(s);
    }
    for (key, raw) in segment_lines {
        keep(key, raw);
    }
    let bytes_after: u64 = order.iter().map(|l| l.len() as u64 + 1).sum();
    report.lines = read.lines;
    report.kept = order.len() as u64;
    report.skipped = read.skipped;
    report.superseded = read.lines - read.skipped - order.len() as u64;
    report.bytes_before = read.bytes;
    report.bytes_after = bytes_after;
    report.segments_merged = merged.len() as u64;
    if dry_run || (merged.is_empty() && bytes_after == base_bytes) {
        // Nothing to merge, nothing dropped (every line readable, one per key,
        // no fences).
        return Ok(report);
    }
    // A temporary file of this compaction's own: another (on another host,
    // unlocked) never writes into it.
    let tmp = dir.join(format!("{COMPACT_TMP}.{}", writer_stamp()));
    let write = || -> std::io::Result<()> {
        let f = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
        let mut w = BufWriter::new(f);
        for line in &order {
            w.write_all(line)?;
            w.write_all(b"\n")?;
        }
        let f = w.into_inner().map_err(|e| e.into_error())?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        // The rename itself durable before the merged segments go.
        sync_dir(dir)
    };
    if let Err(e) = write() {
        let _ = std::fs::remove_file(&tmp);
        return Err(io(format!("compact {}", path.display()))(e));
    }
    report.rewritten = true;
    // A crash before these deletes leaves answers twice: harmless.
    for name in merged {
        let seg = dir.join(name);
        if let Err(e) = std::fs::remove_file(&seg) {
            if !vanished(&e) {
                tracing::warn!("journal: cannot delete the merged {} ({e})", seg.display());
            }
        }
    }
    Ok(report)
}

/// A generator whose answers go through a [`Journal`].
pub struct Journaled {
    pub inner: Box<dyn Generator>,
    pub journal: Journal,
    /// Requests answered from the journal.
    pub hits: u64,
    /// Requests the backend answered (and the journal kept).
    pub calls: u64,
}

/// Between the backend and the caller's sink: journals each answer before
/// passing it on, a burst of answers in one write.
struct JournalSink<'a> {
    journal: &'a mut Journal,
    /// Per request sent: its key and the caller's indexes it answers (one
    /// request can stand for several identical ones of the batch).
    sent: &'a [(String, Vec<usize>)],
    pending: Vec<(usize, Completion)>,
    outer: &'a mut dyn Sink,
    calls: &'a mut u64,
}

impl JournalSink<'_> {
    fn commit(&mut self) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        // What is journaled is what the caller gets: the same answer whether
        // it comes from the backend now or from the journal later.
        let pending: Vec<(usize, Completion)> = std::mem::take(&mut self.pending)
            .into_iter()
            .map(|(i, c)| (i, self.journal.scrubbed(c)))
            .collect();
        let items: Vec<(&str, &Completion)> = pending
            .iter()
            .map(|(i, c)| (self.sent[*i].0.as_str(), c))
            .collect();
        self.journal.append_scrubbed(&items)?;
        *self.calls += pending.len() as u64;
        for (i, c) in pending {
            for &orig in &self.sent[i].1 {
                self.outer.done(orig, Ok(c.clone()));
            }
        }
        Ok(())
    }
}

impl Sink for JournalSink<'_> {
    fn done(&mut self, index: usize, result: Result<Completion>) {
        if index >= self.sent.len() {
            return; // a backend bug; the request counts as unanswered
        }
        match result {
            Ok(c) => self.pending.push((index, c)),
            Err(e) => {
                // One failure may stand for several identical requests.
                let (attempts, reason) = match e {
                    GenError::Request { attempts, reason } => (Some(attempts), reason),
                    other => (None, other.to_string()),
                };
                for &orig in &self.sent[index].1 {
                    let reason = reason.clone();
                    self.outer.done(
                        orig,
                        Err(match attempts {
                            Some(attempts) => GenError::Request { attempts, reason },
                            None => GenError::Other(reason),
                        }),
                    );
                }
            }
        }
    }

    fn flush(&mut self) -> Result<()> {
        self.commit()?;
        self.outer.flush()
    }

    fn cancelled(&self) -> bool {
        self.outer.cancelled()
    }
}

impl Journaled {
    pub fn new(inner: Box<dyn Generator>, journal: Journal) -> Self {
        Journaled {
            inner,
            journal,
            hits: 0,
            calls: 0,
        }
    }

    /// Answers a batch: journal hits at once, the rest from the backend, each
    /// answer journaled (fsynced) before the caller sees it, so a kill at any
    /// point loses nothing already answered. Identical requests in one batch
    /// are sent once.
    pub fn generate_batch(&mut self, requests: &[Request], sink: &mut dyn Sink) -> Result<()> {
        let identity = self.inner.identity().to_string();
        let mut sent: Vec<(String, Vec<usize>)> = Vec::new();
        let mut to_send: Vec<Request> = Vec::new();
        let mut by_key: HashMap<String, usize> = HashMap::new();
        for (i, r) in requests.iter().enumerate() {
            let key = request_key(&identity, r);
            if let Some(c) = self.journal.get(&key) {
                self.hits += 1;
                sink.done(i, Ok(c.clone()));
            } else if let Some(&j) = by_key.get(&key) {
                sent[j].1.push(i);
            } else {
                by_key.insert(key.clone(), sent.len());
                sent.push((key, vec![i]));
                to_send.push(r.clone());
            }
        }
        sink.flush()?;
        if to_send.is_empty() {
            return Ok(());
        }
        let mut js = JournalSink {
            journal: &mut self.journal,
            sent: &sent,
            pending: Vec::new(),
            outer: sink,
            calls: &mut self.calls,
        };
        let result = self.inner.generate_batch(&to_send, &mut js);
        // Keep whatever arrived after the backend's last flush, whatever happened.
        let committed = js.flush();
        result.and(committed)
    }

    /// Answers one request, from the journal if it was answered before.
    pub fn generate_one(&mut self, request: &Request) -> Result<Completion> {
        struct One(Option<Result<Completion>>);
        impl Sink for One {
            fn done(&mut self, _: usize, result: Result<Completion>) {
                self.0 = Some(result);
            }
        }
        let mut one = One(None);
        self.generate_batch(std::slice::from_ref(request), &mut one)?;
        one.0
            .unwrap_or_else(|| Err(GenError::Other("the generator returned nothing".into())))
    }

    pub fn stats(&self) -> Stats {
        self.inner.stats()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Finish, Message, Sampling};

    struct Echo(Stats);

    impl Generator for Echo {
        fn identity(&self) -> &str {
            "echo/v1"
        }
        fn generate_batch(&mut self, requests: &[Request], sink: &mut dyn Sink) -> Result<()> {
            self.0.requests += requests.len() as u64;
            // Answers in reverse order, flushing every other one.
            for (i, r) in requests.iter().enumerate().rev() {
                let text = format!("{}#{}", r.messages[0].content, r.sampling.seed);
                if text.starts_with("fail") {
                    sink.done(
                        i,
                        Err(GenError::Request {
                            attempts: 1,
                            reason: "refused".into(),
                        }),
                    );
                } else {
                    sink.done(
                        i,
                        Ok(Completion {
                            text,
                            prompt_tokens: 1,
                            completion_tokens: 1,
                            finish: Finish::Eos,
                        }),
                    );
                }
                if i % 2 == 0 {
                    sink.flush()?;
                }
            }
            Ok(())
        }
        fn stats(&self) -> Stats {
            self.0
        }
    }

    fn req(text: &str, seed: u64) -> Request {
        Request {
            messages: vec![Message::user(text)],
            sampling: Sampling {
                seed,
                ..Default::default()
            },
        }
    }

    #[test]
    fn answered_requests_are_never_generated_again_even_after_a_torn_line() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = Journaled::new(
            Box::new(Echo(Stats::default())),
            Journal::open(dir.path()).unwrap(),
        );
        assert_eq!(j.generate_one(&req("a", 1)).unwrap().text, "a#1");
        j.generate_one(&req("b", 1)).unwrap();
        j.generate_one(&req("a", 1)).unwrap();
        assert_eq!((j.calls, j.hits), (2, 1));
        let path = j.journal.segment().expect("a segment").to_path_buf();
        drop(j);
        // A torn write (kill -9 in the middle of a line).
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"key\":\"abc\",\"compl").unwrap();
        drop(f);
        let mut j = Journaled::new(
            Box::new(Echo(Stats::default())),
            Journal::open(dir.path()).unwrap(),
        );
        assert_eq!((j.journal.len(), j.journal.skipped()), (2, 1));
        j.generate_one(&req("a", 1)).unwrap();
        j.generate_one(&req("b", 1)).unwrap();
        j.generate_one(&req("a", 2)).unwrap();
        assert_eq!((j.calls, j.hits), (1, 2));
        drop(j);
        let j = Journal::open(dir.path()).unwrap();
        assert_eq!(j.len(), 3);
        // Each journal wrote its own segment; the torn one is left as it was.
        assert_eq!(Journal::files(dir.path()).unwrap().len(), 2);
        // A request's key covers its sampling, including the seed.
        assert_ne!(
            request_key("x", &req("a", 1)),
            request_key("x", &req("a", 2))
        );
        assert_ne!(
            request_key("x", &req("a", 1)),
            request_key("y", &req("a", 1))
        );
    }

    struct Collect(Vec<Option<std::result::Result<String, String>>>);

    impl Sink for Collect {
        fn done(&mut self, index: usize, result: Result<Completion>) {
            assert!(self.0[index].is_none(), "request {index} reported twice");
            self.0[index] = Some(result.map(|c| c.text).map_err(|e| e.to_string()));
        }
    }

    #[test]
    fn a_batch_sends_only_misses_once_and_journals_only_answers() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = Journaled::new(
            Box::new(Echo(Stats::default())),
            Journal::open(dir.path()).unwrap(),
        );
        j.generate_one(&req("a", 1)).unwrap();
        let batch = [
            req("a", 1),
            req("b", 1),
            req("fail", 1),
            req("b", 1),
            req("c", 1),
        ];
        let mut out = Collect(vec![None; batch.len()]);
        j.generate_batch(&batch, &mut out).unwrap();
        let texts: Vec<_> = out.0.into_iter().map(Option::unwrap).collect();
        assert_eq!(texts[0].as_deref(), Ok("a#1"));
        assert_eq!(texts[1].as_deref(), Ok("b#1"));
        assert!(texts[2].as_ref().unwrap_err().contains("refused"));
        assert_eq!(texts[3].as_deref(), Ok("b#1"));
        assert_eq!(texts[4].as_deref(), Ok("c#1"));
        // `a` from the journal; `b` sent once for both; the failure is not kept.
        assert_eq!((j.hits, j.calls), (1, 3));
        assert_eq!(j.inner.stats().requests, 1 + 3);
        drop(j);
        assert_eq!(Journal::open(dir.path()).unwrap().len(), 3);
    }

    fn completion(text: &str) -> Completion {
        Completion {
            text: text.into(),
            prompt_tokens: 1,
            completion_tokens: 2,
            finish: Finish::Stop,
        }
    }

    /// One journal line, as `append` writes it.
    fn line(key: &str, text: &str) -> Vec<u8> {
        let mut l = serde_json::to_vec(&Line {
            key: key.into(),
            completion: completion(text),
        })
        .unwrap();
        l.push(b'\n');
        l
    }

    /// Appends raw bytes to `<dir>/<name>`, creating it.
    fn append_raw(dir: &Path, name: &str, bytes: &[u8]) {
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join(name))
            .unwrap();
        f.write_all(bytes).unwrap();
    }

    /// Sets a file's modification time to `age` ago.
    fn age(path: &Path, age: Duration) {
        let f = OpenOptions::new().write(true).open(path).unwrap();
        f.set_modified(SystemTime::now() - age).unwrap();
    }

    /// A pid of this host that runs no process: a child's, after it ended.
    fn dead_pid() -> u32 {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        assert_eq!(sys::process_alive(pid), Some(false));
        pid
    }

    /// Every answer a reader sees, by key.
    fn answers(dir: &Path) -> HashMap<String, String> {
        Journal::open(dir)
            .unwrap()
            .entries
            .into_iter()
            .map(|(k, c)| (k, c.text))
            .collect()
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }

    const HOUR: Duration = Duration::from_secs(3600);

    #[test]
    fn unreadable_lines_are_skipped_and_counted_and_later_answers_still_read() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = Journal::open(dir.path()).unwrap();
        j.append("k1", &completion("one")).unwrap();
        j.append("k2", &completion("two")).unwrap();
        let seg = j.segment().unwrap().to_path_buf();
        drop(j);
        let seg_name = seg.file_name().unwrap().to_str().unwrap();
        // Not UTF-8 (the old reader stopped here), then not JSON.
        append_raw(
            dir.path(),
            seg_name,
            b"{\"key\":\"k9\",\"completion\":\"\xff\xfe\"}\n",
        );
        append_raw(dir.path(), seg_name, b"this is not json\n");
        append_raw(dir.path(), seg_name, &line("k3", "three"));
        // An old cache's single file, the base, is read the same way.
        append_raw(dir.path(), JOURNAL_FILE, b"\xc3\x28 not utf-8\n");
        append_raw(dir.path(), JOURNAL_FILE, &line("k4", "four"));
        let j = Journal::open(dir.path()).unwrap();
        assert_eq!(j.skipped(), 3);
        assert_eq!(j.len(), 4, "every answer after the bad lines is read");
        assert_eq!(j.get("k3").unwrap().text, "three");
        assert_eq!(j.get("k4").unwrap().text, "four");
        assert!(j.get("k9").is_none());
        drop(j);

        // A torn last line counts as one more; appends go to a new segment.
        append_raw(dir.path(), seg_name, b"{\"key\":\"k5\",\"compl");
        let mut j = Journal::open(dir.path()).unwrap();
        assert_eq!((j.len(), j.skipped()), (4, 4));
        j.append("k6", &completion("six")).unwrap();
        assert_ne!(j.segment().unwrap(), seg);
        drop(j);
        let j = Journal::open(dir.path()).unwrap();
        assert_eq!((j.len(), j.skipped()), (5, 4));
        assert_eq!(j.get("k6").unwrap().text, "six");
    }

    #[test]
    fn two_writers_each_write_their_own_segment_and_a_reader_sees_the_union() {
        let dir = tempfile::tempdir().unwrap();
        append_raw(dir.path(), JOURNAL_FILE, &line("base", "from the base"));
        append_raw(dir.path(), JOURNAL_FILE, &line("both", "old"));
        let mut a = Journal::open(dir.path()).unwrap();
        let mut b = Journal::open(dir.path()).unwrap();
        // Opening creates nothing and takes no lock.
        assert_eq!(names(dir.path()), [JOURNAL_FILE]);
        assert!(a.segment().is_none());
        a.append("a1", &completion("a1")).unwrap();
        b.append("b1", &completion("b1")).unwrap();
        a.append_many(&[("a2", &completion("a2")), ("both", &completion("new"))])
            .unwrap();
        b.append("b2", &completion("b2")).unwrap();
        let (sa, sb) = (a.segment().unwrap(), b.segment().unwrap());
        assert_ne!(sa, sb);
        for (seg, keys) in [(sa, ["a1", "a2"]), (sb, ["b1", "b2"])] {
            let name = seg.file_name().unwrap().to_str().unwrap();
            let (host, pid) = segment_rest(name).and_then(parse_writer).unwrap();
            assert_eq!((host, pid), (host_name(), std::process::id()), "{name}");
            let text = std::fs::read_to_string(seg).unwrap();
            assert_eq!(text.lines().count(), keys.len() + usize::from(seg == sa));
            assert!(keys.iter().all(|k| text.contains(k)), "{text}");
        }
        // The base untouched; the segments after it, by name.
        assert_eq!(
            std::fs::read(dir.path().join(JOURNAL_FILE)).unwrap(),
            [line("base", "from the base"), line("both", "old")].concat()
        );
        let mut segs = vec![sa.to_path_buf(), sb.to_path_buf()];
        segs.sort();
        assert_eq!(
            Journal::files(dir.path()).unwrap(),
            [vec![dir.path().join(JOURNAL_FILE)], segs].concat()
        );
        let seen = answers(dir.path());
        assert_eq!(seen.len(), 6);
        assert_eq!(seen["both"], "new", "a segment's answer beats the base's");
        assert_eq!(seen["b2"], "b2");
        assert_eq!(Journal::open(dir.path()).unwrap().skipped(), 0);
    }

    #[test]
    fn compaction_merges_finished_segments_leaves_live_ones_and_loses_no_answer() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        append_raw(d, JOURNAL_FILE, &line("base", "base"));
        append_raw(d, JOURNAL_FILE, &line("x", "x from the base"));
        // A writer of this process: live, whatever its age.
        let mut live = Journal::open(d).unwrap();
        live.append("live", &completion("live")).unwrap();
        let own = live.segment().unwrap().to_path_buf();
        age(&own, 2 * HOUR);
        // A writer of this host that is gone, with a torn last line.
        let dead = format!("journal.{}.{}.1-0.jsonl", host_name(), dead_pid());
        append_raw(d, &dead, &line("dead", "dead"));
        append_raw(d, &dead, &line("x", "x from the dead"));
        append_raw(d, &dead, b"{\"key\":\"torn\",\"compl");
        // Another host's: unchanged for two hours (finished), for a minute (live).
        let old = "journal.other-host.4242.2-0.jsonl";
        append_raw(d, old, &line("old", "old"));
        age(&d.join(old), 2 * HOUR);
        let young = "journal.other-host.4243.3-0.jsonl";
        append_raw(d, young, &line("young", "young"));
        append_raw(d, young, &line("base", "base from the young"));
        age(&d.join(young), Duration::from_secs(60));
        // A name that tells no writer: by its age too.
        let odd = "journal.copy.jsonl";
        append_raw(d, odd, &line("odd", "odd"));
        age(&d.join(odd), 2 * HOUR);
        // A crashed compaction's leftover, and another host's in progress.
        let stale_tmp = format!("{COMPACT_TMP}.{}.{}.4-0", host_name(), dead_pid());
        let busy_tmp = format!("{COMPACT_TMP}.other-host.4244.5-0");
        append_raw(d, &stale_tmp, &line("tmp", "tmp"));
        append_raw(d, &busy_tmp, &line("tmp", "tmp"));

        let before = answers(d);
        assert_eq!(Journal::open(d).unwrap().skipped(), 1);
        assert_eq!(before.len(), 6 + 1);
        assert_eq!(before["x"], "x from the dead");
        assert_eq!(before["base"], "base from the young");

        // The new base: the base's keys, then each merged segment's new ones,
        // segments by name.
        let mut merged = [(odd, "odd"), (dead.as_str(), "dead"), (old, "old")];
        merged.sort();
        let new_base: Vec<u8> = [line("base", "base"), line("x", "x from the dead")]
            .into_iter()
            .chain(merged.iter().map(|(_, k)| line(k, k)))
            .collect::<Vec<_>>()
            .concat();
        let merged_bytes = [line("base", "base"), line("x", "x from the base")]
            .concat()
            .len()
            + [line("dead", "dead"), line("x", "x from the dead")]
                .concat()
                .len()
            + "{\"key\":\"torn\",\"compl".len()
            + line("old", "old").len()
            + line("odd", "odd").len();
        let expect = CompactReport {
            lines: 7,
            kept: 5,
            skipped: 1,
            superseded: 1,
            bytes_before: merged_bytes as u64,
            bytes_after: new_base.len() as u64,
            segments_merged: 3,
            segments_live: 2,
            locked: false,
            rewritten: false,
        };
        // A dry run says what would happen and changes (and creates) nothing.
        let files = names(d);
        let plan = Journal::compact_dry_run(d, HOUR).unwrap();
        assert_eq!(plan, expect);
        assert_eq!(names(d), files);

        let done = Journal::compact(d, HOUR).unwrap();
        assert_eq!(
            done,
            CompactReport {
                rewritten: true,
                ..expect.clone()
            }
        );
        let own_name = own.file_name().unwrap().to_str().unwrap().to_string();
        let mut left = vec![
            JOURNAL_FILE.to_string(),
            LOCK_FILE.to_string(),
            busy_tmp.clone(),
            own_name,
            young.to_string(),
        ];
        left.sort();
        assert_eq!(
            names(d),
            left,
            "the merged segments and the stale tmp are gone"
        );
        // The base: last answer per key, at the place of its first line.
        assert_eq!(std::fs::read(d.join(JOURNAL_FILE)).unwrap(), new_base);
        assert_eq!(answers(d), before, "no answer lost");
        assert_eq!(Journal::open(d).unwrap().skipped(), 0);

        // The live writer goes on in its own segment, still read.
        live.append("later", &completion("later")).unwrap();
        assert_eq!(live.segment().unwrap(), own);
        assert_eq!(answers(d)["later"], "later");
        drop(live);

        // Nothing to merge or drop: not rewritten. With no grace, the young
        // one of the other host is merged; this process's never.
        let again = Journal::compact(d, HOUR).unwrap();
        assert_eq!(
            (again.dropped(), again.segments_merged, again.rewritten),
            (0, 0, false),
            "{again:?}"
        );
        let before = answers(d);
        let now = Journal::compact(d, Duration::ZERO).unwrap();
        assert_eq!((now.segments_merged, now.segments_live), (1, 1), "{now:?}");
        assert!(now.rewritten);
        assert_eq!(answers(d), before);
        assert!(!d.join(young).exists() && own.exists());
        assert!(!d.join(&busy_tmp).exists(), "no grace: every leftover goes");

        // Every journal under a root, one of segments only too; a missing root
        // has none.
        let sub = d.join("sub");
        let mut j = Journal::open(&sub).unwrap();
        j.append("s", &completion("s")).unwrap();
        drop(j);
        let all = Journal::compact_all(d.parent().unwrap(), true, HOUR).unwrap();
        assert!(all
            .iter()
            .any(|(p, r)| *p == d.join(JOURNAL_FILE) && r.kept == 6));
        assert!(all
            .iter()
            .any(|(p, r)| *p == sub.join(JOURNAL_FILE) && r.segments_live == 1));
        assert!(!sub.join(JOURNAL_FILE).exists());
        assert!(Journal::compact_all(&d.join("none"), false, HOUR)
            .unwrap()
            .is_empty());
    }

    #[test]
    fn a_held_lock_keeps_a_second_compaction_off_and_no_lock_is_needed_to_write() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let dead = format!("journal.{}.{}.1-0.jsonl", host_name(), dead_pid());
        append_raw(d, &dead, &line("a", "a"));
        // Another compaction holds the lock.
        let held = File::create(d.join(LOCK_FILE)).unwrap();
        held.lock().unwrap();
        let r = Journal::compact(d, HOUR).unwrap();
        assert_eq!(
            r,
            CompactReport {
                locked: true,
                ..CompactReport::default()
            }
        );
        assert!(d.join(&dead).exists() && !d.join(JOURNAL_FILE).exists());
        // Writers and readers take no lock.
        let mut j = Journal::open(d).unwrap();
        j.append("b", &completion("b")).unwrap();
        assert_eq!(answers(d).len(), 2);
        drop(held);
        let r = Journal::compact(d, HOUR).unwrap();
        assert_eq!((r.segments_merged, r.segments_live, r.kept), (1, 1, 1));
        assert_eq!(answers(d).len(), 2);
        drop(j);
    }

    #[test]
    fn a_writer_whose_segment_was_merged_away_starts_a_new_one() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let mut j = Journal::open(d).unwrap();
        j.append("a", &completion("a")).unwrap();
        let first = j.segment().unwrap().to_path_buf();
        // Another host's compaction took it for finished: merged, deleted.
        let text = std::fs::read(&first).unwrap();
        append_raw(d, JOURNAL_FILE, &text);
        std::fs::remove_file(&first).unwrap();
        j.append("b", &completion("b")).unwrap();
        let second = j.segment().unwrap().to_path_buf();
        assert_ne!(second, first);
        assert!(std::fs::read_to_string(&second).unwrap().contains("\"b\""));
        let seen = answers(d);
        assert_eq!((seen["a"].as_str(), seen["b"].as_str()), ("a", "b"));
    }

    #[test]
    fn segment_names_tell_their_writer() {
        assert_eq!(sanitize_host(" node-1.cluster_x\n"), "node-1-cluster-x");
        assert_eq!(sanitize_host(""), "unknown-host");
        let stamp = writer_stamp();
        assert_eq!(
            parse_writer(&stamp),
            Some((host_name(), std::process::id()))
        );
        assert_ne!(writer_stamp(), stamp);
        let name = format!("journal.{stamp}.jsonl");
        assert_eq!(segment_rest(&name), Some(stamp.as_str()));
        assert_eq!(segment_rest(JOURNAL_FILE), None);
        assert_eq!(segment_rest("journal.lock"), None);
        assert_eq!(segment_rest("journal.jsonl.compact-tmp.h.1.2"), None);
        assert_eq!(compact_tmp_rest("journal.jsonl.compact-tmp"), Some(""));
        assert_eq!(
            compact_tmp_rest("journal.jsonl.compact-tmp.h.1.2"),
            Some("h.1.2")
        );
        for bad in [
            "h.1", "h.0.2", "h.x.2", "h.1.", "h_x.1.2", "h.1.2.3", ".1.2",
        ] {
            assert_eq!(parse_writer(bad), None, "{bad}");
        }
        assert_eq!(sys::process_alive(std::process::id()), Some(true));
        // A process of this host that runs (the parent of this test, or init).
        assert_eq!(sys::process_alive(1), Some(true));
    }

    #[test]
    fn an_answer_echoing_the_api_key_is_journaled_without_it() {
        const KEY: &str = "sk-test-0123456789abcdef";
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::open(dir.path())
            .unwrap()
            .with_secrets([String::new(), KEY.to_string()]);
        let mut j = Journaled::new(Box::new(Echo(Stats::default())), journal);
        // Echo answers with the prompt: a server echoing the key.
        let r = req(&format!("my key is {KEY}, twice: {KEY}"), 1);
        let first = j.generate_one(&r).unwrap();
        let cut = crate::scrub_secrets(KEY, &[KEY]);
        assert!(!cut.contains(KEY));
        assert_eq!(first.text, format!("my key is {cut}, twice: {cut}#1"));
        // From the journal: the same answer.
        assert_eq!(j.generate_one(&r).unwrap(), first);
        assert_eq!((j.calls, j.hits), (1, 1));
        j.journal
            .append("direct", &completion(&format!("x{KEY}y")))
            .unwrap();
        let seg = j.journal.segment().unwrap().to_path_buf();
        drop(j);
        let bytes = std::fs::read(seg).unwrap();
        let text = String::from_utf8(bytes).unwrap();
        assert!(!text.contains(KEY), "{text}");
        assert!(text.contains(&format!("x{cut}y")), "{text}");

        // An answer journaled with the key before scrubbing existed is not
        // handed out with it.
        append_raw(
            dir.path(),
            JOURNAL_FILE,
            &line("old", &format!("leak {KEY}")),
        );
        let j = Journal::open(dir.path()).unwrap().with_secrets([KEY]);
        assert_eq!(j.get("old").unwrap().text, format!("leak {cut}"));
    }
}
