//! Seeded randomness. Every choice draws from its own stream, derived with
//! blake3 from (seed, purpose), so adding a random choice in one place never
//! shifts the choices made elsewhere.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const DOMAIN: &[u8] = b"flow-stages/seed/v1";

fn digest(seed: u64, purpose: &str, item: &str) -> blake3::Hash {
    let mut h = blake3::Hasher::new();
    h.update(DOMAIN);
    h.update(&seed.to_le_bytes());
    // Length prefixes keep ("ab", "c") and ("a", "bc") apart.
    h.update(&(purpose.len() as u64).to_le_bytes());
    h.update(purpose.as_bytes());
    h.update(&(item.len() as u64).to_le_bytes());
    h.update(item.as_bytes());
    h.finalize()
}

/// A random stream for one purpose.
pub fn rng(seed: u64, purpose: &str) -> ChaCha8Rng {
    ChaCha8Rng::from_seed(*digest(seed, purpose, "").as_bytes())
}

/// A seeded hash of one item (an example or document id) for one purpose.
///
/// Ranking items by it is a seeded shuffle with two properties a stream
/// shuffle lacks: the rank of an item does not depend on the other items,
/// so taking a prefix of size k+1 only adds to the prefix of size k, and
/// adding data to the pool does not reorder what was there.
pub fn item_hash(seed: u64, purpose: &str, item: &str) -> u64 {
    let bytes = digest(seed, purpose, item);
    let mut first = [0u8; 8];
    first.copy_from_slice(&bytes.as_bytes()[..8]);
    u64::from_le_bytes(first)
}

/// [`item_hash`] mapped to a uniform number in [0, 1).
pub fn item_unit(seed: u64, purpose: &str, item: &str) -> f64 {
    (item_hash(seed, purpose, item) >> 11) as f64 / (1u64 << 53) as f64
}

/// A standard normal draw (Box-Muller; rand_distr is not a dependency).
pub fn normal(rng: &mut impl Rng) -> f64 {
    let u1: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
    let u2: f64 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::RngCore;

    #[test]
    fn streams_depend_on_seed_and_purpose() {
        let a = rng(1, "mix/real").next_u64();
        assert_eq!(a, rng(1, "mix/real").next_u64());
        assert_ne!(a, rng(2, "mix/real").next_u64());
        assert_ne!(a, rng(1, "mix/generated").next_u64());
        assert_ne!(item_hash(1, "ab", "c"), item_hash(1, "a", "bc"));
    }

    #[test]
    fn unit_is_roughly_uniform() {
        let n = 10_000;
        let below = (0..n)
            .filter(|i| item_unit(7, "t", &i.to_string()) < 0.25)
            .count();
        assert!((2_300..2_700).contains(&below), "{below}");
    }
}
