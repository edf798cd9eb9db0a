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

use crate::{Completion, GenError, Generator, Request, Result, Stats};

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
        let mut line = serde_json::to_string(&Line {
            key: key.to_string(),
            completion: completion.clone(),
        })
        .map_err(GenError::other)?;
        line.push('\n');
        self.file
            .write_all(line.as_bytes())
            .and_then(|_| self.file.sync_data())
            .map_err(io(format!("append to {}", self.path.display())))?;
        self.entries.insert(key.to_string(), completion.clone());
        self.appended += 1;
        Ok(())
    }
}

/// A generator whose answers go through a [`Journal`].
pub struct Journaled {
    pub inner: Box<dyn Generator>,
    pub journal: Journal,
    /// Requests answered from the journal.
    pub hits: u64,
    /// Requests sent to the backend.
    pub calls: u64,
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

    /// Answers one request, from the journal if it was answered before.
    pub fn generate_one(&mut self, request: &Request) -> Result<Completion> {
        let key = request_key(self.inner.identity(), request);
        if let Some(c) = self.journal.get(&key) {
            self.hits += 1;
            return Ok(c.clone());
        }
        let mut out = self.inner.generate(std::slice::from_ref(request))?;
        let c = out
            .pop()
            .ok_or_else(|| GenError::Other("the generator returned nothing".into()))?;
        self.calls += 1;
        self.journal.append(&key, &c)?;
        Ok(c)
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
        fn generate(&mut self, requests: &[Request]) -> Result<Vec<Completion>> {
            self.0.requests += requests.len() as u64;
            Ok(requests
                .iter()
                .map(|r| Completion {
                    text: format!("{}#{}", r.messages[0].content, r.sampling.seed),
                    prompt_tokens: 1,
                    completion_tokens: 1,
                    finish: Finish::Eos,
                })
                .collect())
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
}
