//! An append-only journal of finished requests, shared by every run and
//! every backend: `<dir>/journal.jsonl`, one `{"key", "completion"}` per line,
//! each line fsynced. A torn last line (kill -9 mid-write) is skipped on
//! read and fenced off by a newline before the next append, so a finished
//! request is never lost and never generated again.
//!
//! Reading never stops early: a line that is not UTF-8 or not a journal line
//! is skipped and counted ([`Journal::skipped`]), and every later answer is
//! still read. [`Journal::compact`] (run by `flow gc`) rewrites the file with
//! only its readable lines, the last answer per key.
//!
//! Locking: an open [`Journal`] holds a shared `flock` on `<dir>/journal.lock`
//! for its whole life (appends from several processes are fine: each is one
//! `O_APPEND` write); compaction takes it exclusively, and skips a journal
//! that is in use, so no appender ever writes to a file renamed away.
//!
//! Secrets given with [`Journal::with_secrets`] (the API key) are cut out of
//! every answer ([`crate::scrub_secrets`]) before it is written.

use std::collections::HashMap;
use std::fs::{File, OpenOptions, TryLockError};
use std::io::{BufRead, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::{Completion, GenError, Generator, Request, Result, Sink, Stats};

const JOURNAL_FILE: &str = "journal.jsonl";
const LOCK_FILE: &str = "journal.lock";
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
    path: PathBuf,
    entries: HashMap<String, Completion>,
    file: File,
    /// The shared lock on `journal.lock`, held while the journal is open.
    _lock: File,
    /// Cut out of every answer before it is written, longest first.
    secrets: Vec<String>,
    /// Unreadable lines met when the journal was opened.
    skipped: u64,
    /// Lines appended by this process.
    pub appended: u64,
}

/// What [`Journal::compact`] did (or, for a dry run, would do) to one journal.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CompactReport {
    /// Non-empty lines in the journal.
    pub lines: u64,
    /// Answers kept (one line per key).
    pub kept: u64,
    /// Lines dropped as unreadable (not UTF-8, not a journal line, torn).
    pub skipped: u64,
    /// Readable lines dropped because a later line answers the same key.
    pub superseded: u64,
    pub bytes_before: u64,
    pub bytes_after: u64,
    /// The journal was open in another process (or this one): left untouched.
    pub busy: bool,
    /// The file was rewritten (false for a dry run, a busy journal, or one
    /// with nothing to drop).
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

/// Reads every line of a journal, raw bytes per line so that one bad line
/// costs only itself: `each` gets every readable line (in file order) with
/// its bytes (without the newline). Returns (non-empty lines, unreadable lines).
fn scan(reader: impl Read, path: &Path, mut each: impl FnMut(Line, &[u8])) -> Result<(u64, u64)> {
    let mut reader = BufReader::new(reader);
    let mut buf = Vec::new();
    let (mut lines, mut skipped) = (0u64, 0u64);
    loop {
        buf.clear();
        let n = reader
            .read_until(b'\n', &mut buf)
            .map_err(io(format!("read {}", path.display())))?;
        if n == 0 {
            break;
        }
        let mut raw = buf.as_slice();
        while let Some((b'\n' | b'\r', rest)) = raw.split_last() {
            raw = rest;
        }
        if raw.iter().all(u8::is_ascii_whitespace) {
            continue; // a fence, or an empty line: nothing lost
        }
        lines += 1;
        // `from_slice` rejects invalid UTF-8 as well as bad JSON.
        match serde_json::from_slice::<Line>(raw) {
            Ok(line) => each(line, raw),
            Err(_) => skipped += 1,
        }
    }
    Ok((lines, skipped))
}

/// Opens (creating) `<dir>/journal.lock`.
fn open_lock(dir: &Path) -> Result<File> {
    let path = dir.join(LOCK_FILE);
    OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)
        .map_err(io(format!("open {}", path.display())))
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

impl Journal {
    pub fn open(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(io(format!("create {}", dir.display())))?;
        // Before opening the file: a compaction in progress finishes first,
        // so the file opened is the one that stays.
        let lock = open_lock(dir)?;
        if let Err(e) = lock.lock_shared() {
            // A file system without locks: appending still works; compaction,
            // which needs the exclusive lock, will not run on it.
            tracing::warn!("journal {}: cannot lock ({e})", dir.display());
        }
        let path = dir.join(JOURNAL_FILE);
        let mut file = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(&path)
            .map_err(io(format!("open {}", path.display())))?;
        let mut entries = HashMap::new();
        let (lines, skipped) = scan(&file, &path, |l, _| {
            entries.insert(l.key, l.completion);
        })?;
        if skipped > 0 {
            tracing::warn!(
                "journal {}: skipped {skipped} unreadable lines of {lines} (`flow gc` compacts it)",
                path.display()
            );
        }
        // Fence off a torn last line.
        let len = file.metadata().map(|m| m.len()).unwrap_or(0);
        if len > 0 {
            let mut last = [0u8; 1];
            file.seek(SeekFrom::Start(len - 1))
                .and_then(|_| file.read_exact(&mut last))
                .map_err(io(format!("read {}", path.display())))?;
            if last[0] != b'\n' {
                file.write_all(b"\n")
                    .map_err(io(format!("write {}", path.display())))?;
            }
        }
        Ok(Journal {
            path,
            entries,
            file,
            _lock: lock,
            secrets: Vec::new(),
            skipped,
            appended: 0,
        })
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

    pub fn path(&self) -> &Path {
        &self.path
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
        self.file
            .write_all(buf.as_bytes())
            .and_then(|_| self.file.sync_data())
            .map_err(io(format!("append to {}", self.path.display())))?;
        for (key, completion) in items {
            self.entries.insert(key.to_string(), (*completion).clone());
        }
        self.appended += items.len() as u64;
        Ok(())
    }

    /// Rewrites `<dir>/journal.jsonl` with only its readable lines, the last
    /// answer per key, atomically (a temporary file in `dir`, fsynced, renamed
    /// over the journal). A journal open anywhere is left alone
    /// ([`CompactReport::busy`]); one with nothing to drop is not rewritten.
    pub fn compact(dir: &Path) -> Result<CompactReport> {
        compact_in(dir, false)
    }

    /// What [`Journal::compact`] would do, changing nothing.
    pub fn compact_dry_run(dir: &Path) -> Result<CompactReport> {
        compact_in(dir, true)
    }

    /// Compacts (or, with `dry_run`, inspects) every journal in the folders
    /// under `root` (e.g. `<cache>/journal`), in path order. A missing `root`
    /// has none.
    pub fn compact_all(root: &Path, dry_run: bool) -> Result<Vec<(PathBuf, CompactReport)>> {
        let mut dirs = Vec::new();
        let mut stack = vec![root.to_path_buf()];
        while let Some(dir) = stack.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            if dir.join(JOURNAL_FILE).is_file() {
                dirs.push(dir.clone());
            }
            for e in entries.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    stack.push(e.path());
                }
            }
        }
        dirs.sort();
        dirs.into_iter()
            .map(|d| compact_in(&d, dry_run).map(|r| (d.join(JOURNAL_FILE), r)))
            .collect()
    }
}

fn compact_in(dir: &Path, dry_run: bool) -> Result<CompactReport> {
    let path = dir.join(JOURNAL_FILE);
    if !path.is_file() {
        return Ok(CompactReport::default());
    }
    let lock_path = dir.join(LOCK_FILE);
    let lock = if dry_run {
        // Creates nothing. Reading beside appenders is safe; wait only for a
        // compaction in progress.
        let lock = File::open(&lock_path).ok();
        if let Some(l) = &lock {
            let _ = l.lock_shared();
        }
        lock
    } else {
        let lock = open_lock(dir)?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                return Ok(CompactReport {
                    busy: true,
                    ..CompactReport::default()
                })
            }
            Err(TryLockError::Error(e)) => {
                return Err(io(format!("lock {}", lock_path.display()))(e))
            }
        }
        Some(lock)
    };
    let file = File::open(&path).map_err(io(format!("open {}", path.display())))?;
    let bytes_before = file
        .metadata()
        .map_err(io(format!("stat {}", path.display())))?
        .len();
    // Last answer per key, at the place of the key's first line.
    let mut order: Vec<Vec<u8>> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    let (lines, skipped) = scan(&file, &path, |l, raw| match index.get(&l.key) {
        Some(&i) => order[i] = raw.to_vec(),
        None => {
            index.insert(l.key, order.len());
            order.push(raw.to_vec());
        }
    })?;
    let bytes_after: u64 = order.iter().map(|l| l.len() as u64 + 1).sum();
    let mut report = CompactReport {
        lines,
        kept: order.len() as u64,
        skipped,
        superseded: lines - skipped - order.len() as u64,
        bytes_before,
        bytes_after,
        busy: false,
        rewritten: false,
    };
    if dry_run || bytes_after == bytes_before {
        // Nothing dropped (every line readable, one per key, no fences).
        return Ok(report);
    }
    let tmp = dir.join(COMPACT_TMP);
    let write = || -> std::io::Result<()> {
        let f = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(&tmp)?;
        let mut w = BufWriter::new(f);
        for line in &order {
            w.write_all(line)?;
            w.write_all(b"\n")?;
        }
        let f = w.into_inner().map_err(|e| e.into_error())?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        // The rename itself durable.
        #[cfg(unix)]
        File::open(dir)?.sync_all()?;
        Ok(())
    };
    if let Err(e) = write() {
        let _ = std::fs::remove_file(&tmp);
        return Err(io(format!("compact {}", path.display()))(e));
    }
    report.rewritten = true;
    drop(lock);
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
        drop(j);
        // A torn write (kill -9 in the middle of a line).
        let path = dir.path().join("journal.jsonl");
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"key\":\"abc\",\"compl").unwrap();
        drop(f);
        let mut j = Journaled::new(
            Box::new(Echo(Stats::default())),
            Journal::open(dir.path()).unwrap(),
        );
        assert_eq!(j.journal.len(), 2);
        j.generate_one(&req("a", 1)).unwrap();
        j.generate_one(&req("b", 1)).unwrap();
        j.generate_one(&req("a", 2)).unwrap();
        assert_eq!((j.calls, j.hits), (1, 2));
        drop(j);
        let j = Journal::open(dir.path()).unwrap();
        assert_eq!(j.len(), 3);
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

    fn append_raw(dir: &Path, bytes: &[u8]) {
        let mut f = OpenOptions::new()
            .append(true)
            .open(dir.join(JOURNAL_FILE))
            .unwrap();
        f.write_all(bytes).unwrap();
    }

    #[test]
    fn unreadable_lines_are_skipped_and_counted_and_later_answers_still_read() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = Journal::open(dir.path()).unwrap();
        j.append("k1", &completion("one")).unwrap();
        j.append("k2", &completion("two")).unwrap();
        drop(j);
        // Not UTF-8 (the old reader stopped here), then not JSON.
        append_raw(
            dir.path(),
            b"{\"key\":\"k9\",\"completion\":\"\xff\xfe\"}\n",
        );
        append_raw(dir.path(), b"this is not json\n");
        append_raw(dir.path(), &line("k3", "three"));
        append_raw(dir.path(), &line("k4", "four"));
        let j = Journal::open(dir.path()).unwrap();
        assert_eq!(j.skipped(), 2);
        assert_eq!(j.len(), 4, "every answer after the bad lines is read");
        assert_eq!(j.get("k3").unwrap().text, "three");
        assert_eq!(j.get("k4").unwrap().text, "four");
        assert!(j.get("k9").is_none());
        drop(j);

        // A torn last line counts as one more, and appends after it still land.
        append_raw(dir.path(), b"{\"key\":\"k5\",\"compl");
        let mut j = Journal::open(dir.path()).unwrap();
        assert_eq!((j.len(), j.skipped()), (4, 3));
        j.append("k6", &completion("six")).unwrap();
        drop(j);
        let j = Journal::open(dir.path()).unwrap();
        assert_eq!((j.len(), j.skipped()), (5, 3));
        assert_eq!(j.get("k6").unwrap().text, "six");
    }

    #[test]
    fn compaction_keeps_every_answer_last_wins_and_drops_bad_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(JOURNAL_FILE);
        std::fs::write(&path, b"").unwrap();
        append_raw(dir.path(), &line("a", "a-old"));
        append_raw(dir.path(), &line("b", "b"));
        append_raw(dir.path(), b"\xc3\x28 not utf-8\n");
        append_raw(dir.path(), b"\n"); // a fence: not counted
        append_raw(dir.path(), b"{\"key\":\"x\"}\n"); // JSON, not a journal line
        append_raw(dir.path(), &line("a", "a-new"));
        append_raw(dir.path(), &line("c", "c"));
        append_raw(dir.path(), b"{\"key\":\"d\",\"comp"); // torn
        let before = Journal::open(dir.path()).unwrap();
        assert_eq!(before.skipped(), 3);
        let entries = before.entries.clone();
        assert_eq!(entries["a"].text, "a-new");

        // In use: left alone.
        let busy = Journal::compact(dir.path()).unwrap();
        assert!(busy.busy && !busy.rewritten, "{busy:?}");
        drop(before);
        let bytes = std::fs::read(&path).unwrap();

        // A dry run says what would go and changes nothing.
        let plan = Journal::compact_dry_run(dir.path()).unwrap();
        let expect = CompactReport {
            lines: 7,
            kept: 3,
            skipped: 3,
            superseded: 1,
            bytes_before: bytes.len() as u64,
            bytes_after: (line("a", "a-new").len() + line("b", "b").len() + line("c", "c").len())
                as u64,
            busy: false,
            rewritten: false,
        };
        assert_eq!(plan, expect);
        assert_eq!(plan.dropped(), 4);
        assert_eq!(std::fs::read(&path).unwrap(), bytes);

        let done = Journal::compact(dir.path()).unwrap();
        assert_eq!(
            done,
            CompactReport {
                rewritten: true,
                ..expect.clone()
            }
        );
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 3, "{text}");
        assert!(!dir.path().join(COMPACT_TMP).exists());
        let after = Journal::open(dir.path()).unwrap();
        assert_eq!(after.skipped(), 0);
        assert_eq!(after.entries, entries);
        drop(after);

        // Nothing left to drop: not rewritten.
        let again = Journal::compact(dir.path()).unwrap();
        assert_eq!((again.dropped(), again.rewritten), (0, false), "{again:?}");

        // Every journal under a root, a missing root has none.
        let all = Journal::compact_all(dir.path().parent().unwrap(), true).unwrap();
        assert!(all.iter().any(|(p, r)| *p == path && r.kept == 3));
        assert!(Journal::compact_all(&dir.path().join("none"), false)
            .unwrap()
            .is_empty());
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
        drop(j);
        let bytes = std::fs::read(dir.path().join(JOURNAL_FILE)).unwrap();
        let text = String::from_utf8(bytes).unwrap();
        assert!(!text.contains(KEY), "{text}");
        assert!(text.contains(&format!("x{cut}y")), "{text}");

        // An answer journaled with the key before scrubbing existed is not
        // handed out with it.
        append_raw(dir.path(), &line("old", &format!("leak {KEY}")));
        let j = Journal::open(dir.path()).unwrap().with_secrets([KEY]);
        assert_eq!(j.get("old").unwrap().text, format!("leak {cut}"));
    }
}
