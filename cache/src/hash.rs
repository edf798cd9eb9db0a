//! blake3 hashing and validation of hash-shaped names.
//!
//! Every key, hash and scope that becomes part of a path goes through [`check`] first, so a
//! path is never built from arbitrary text (no `..`, no `/`, no surprises).

use std::io::{Read, Write};

use crate::CacheError;

/// A blake3 hash as 64 lowercase hex characters.
pub type Hash = String;

/// Read buffer for streaming hashes and copies: large enough that blake3 can use SIMD well.
const BUF_LEN: usize = 1 << 20;

/// True when `s` is 64 lowercase hex characters, the shape of every key, hash and scope.
pub fn is_valid_hash(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The blake3 hash of `bytes`, as lowercase hex.
pub fn hash_bytes(bytes: &[u8]) -> Hash {
    blake3::hash(bytes).to_hex().to_string()
}

/// Rejects anything that is not a valid hash; `what` says which argument it was.
pub(crate) fn check(what: &'static str, value: &str) -> Result<(), CacheError> {
    if is_valid_hash(value) {
        return Ok(());
    }
    // Keep the message readable when someone passes a whole document by mistake.
    let value = if value.chars().count() > 80 {
        let short: String = value.chars().take(77).collect();
        format!("{short}...")
    } else {
        value.to_string()
    };
    Err(CacheError::InvalidKey { what, value })
}

/// Streams `reader` through blake3; returns the hash and the number of bytes read.
pub(crate) fn hash_reader(reader: impl Read) -> std::io::Result<(Hash, u64)> {
    copy_hashing(reader, std::io::sink())
}

/// Copies `reader` into `writer` while hashing it, so a copy needs only one pass.
/// Returns the hash and the number of bytes copied.
pub(crate) fn copy_hashing(
    mut reader: impl Read,
    mut writer: impl Write,
) -> std::io::Result<(Hash, u64)> {
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; BUF_LEN];
    let mut total = 0u64;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buf[..n]);
        writer.write_all(&buf[..n])?;
        total += n as u64;
    }
    Ok((hasher.finalize().to_hex().to_string(), total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_hashes_are_64_lowercase_hex() {
        assert!(is_valid_hash(&"a".repeat(64)));
        assert!(is_valid_hash(&hash_bytes(b"x")));
        assert!(!is_valid_hash(&"A".repeat(64)));
        assert!(!is_valid_hash(&"a".repeat(63)));
        assert!(!is_valid_hash(&"a".repeat(65)));
        assert!(!is_valid_hash(&format!("../{}", "a".repeat(61))));
        assert!(!is_valid_hash(&"g".repeat(64)));
        assert!(!is_valid_hash(""));
    }

    #[test]
    fn invalid_key_is_rejected_with_a_short_message() {
        let err = check("key", &"x/".repeat(100)).unwrap_err();
        let msg = err.to_string();
        assert!(msg.starts_with("invalid key"), "{msg}");
        assert!(msg.len() < 200, "{msg}");
        assert!(check("key", &hash_bytes(b"ok")).is_ok());
    }

    #[test]
    fn streaming_hash_matches_one_shot_hash() {
        let data: Vec<u8> = (0..3 * BUF_LEN + 17).map(|i| (i % 251) as u8).collect();
        let (h, n) = hash_reader(&data[..]).unwrap();
        assert_eq!(h, hash_bytes(&data));
        assert_eq!(n, data.len() as u64);
        let mut copy = Vec::new();
        let (h2, _) = copy_hashing(&data[..], &mut copy).unwrap();
        assert_eq!(h2, h);
        assert_eq!(copy, data);
    }
}
