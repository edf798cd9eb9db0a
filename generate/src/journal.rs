//! An append-only journal of finished requests, shared by every run and
//! every backend: `<dir>/journal.jsonl`, one `{"key", "completion"}` per line,
//! each line fsynced. A torn last line (kill -9 mid-write) is skipped on
//! read and fenced off by a newline before the next append, so a finished
//! request is never lost and never generated again.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::{Completion, GenError, Generator, Request, Result, Sink, Stats};

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
    /// Lines appended by this process.
    pub appended: u64,
}

fn io(context: String) -> impl FnOnce(std::io::Error) -> GenError {
    move |source| GenError::Io { context, source }
}

impl Journal {
    pub fn open(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(io(format!("create {}", dir.display())))?;
        let path = dir.join("journal.jsonl");
        let mut file = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(&path)
            .map_err(io(format!("open {}", path.display())))?;
        let mut entries = HashMap::new();
        for line in BufReader::new(&file).lines() {
            let Ok(line) = line else { break };
            if let Ok(l) = serde_json::from_str::<Line>(&line) {
                entries.insert(l.key, l.completion);
            }
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
            appended: 0,
        })
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

    pub fn append(&mut self, key: &str, completion: &Completion) -> Result<()> {
        self.append_many(&[(key, completion)])
    }

    /// Appends several lines with one write and one fsync: completions that
    /// arrive together become durable together.
    pub fn append_many(&mut self, items: &[(&str, &Completion)]) -> Result<()> {
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
        let pending = std::mem::take(&mut self.pending);
        let items: Vec<(&str, &Completion)> = pending
            .iter()
            .map(|(i, c)| (self.sent[*i].0.as_str(), c))
            .collect();
        self.journal.append_many(&items)?;
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
}
