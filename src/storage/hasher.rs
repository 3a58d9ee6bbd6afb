//! A digest computation that can be suspended into bytes and resumed, so a chunked
//! upload carries its hash state from one request to the next (and across restarts,
//! or to another replica) without re-reading what it already has.

use sha2::Digest as _;
use sha2::digest::common::hazmat::SerializableState;

use crate::oci::{Algorithm, Digest};

#[derive(Clone)]
pub enum Hasher {
    Sha256(sha2::Sha256),
    Sha512(sha2::Sha512),
}

#[derive(Debug, thiserror::Error)]
#[error("saved hash state is corrupt")]
pub struct CorruptHashState;

impl Hasher {
    pub fn new(algorithm: Algorithm) -> Self {
        match algorithm {
            Algorithm::Sha256 => Hasher::Sha256(sha2::Sha256::new()),
            Algorithm::Sha512 => Hasher::Sha512(sha2::Sha512::new()),
        }
    }

    pub fn algorithm(&self) -> Algorithm {
        match self {
            Hasher::Sha256(_) => Algorithm::Sha256,
            Hasher::Sha512(_) => Algorithm::Sha512,
        }
    }

    pub fn update(&mut self, data: &[u8]) {
        match self {
            Hasher::Sha256(h) => h.update(data),
            Hasher::Sha512(h) => h.update(data),
        }
    }

    pub fn finish(self) -> Digest {
        let (algorithm, hex) = match self {
            Hasher::Sha256(h) => (Algorithm::Sha256, hex::encode(h.finalize())),
            Hasher::Sha512(h) => (Algorithm::Sha512, hex::encode(h.finalize())),
        };
        Digest::new(algorithm, &hex).expect("a hash is always valid hex of the right length")
    }

    /// The state as hex, for storing in an upload's state object.
    pub fn save(&self) -> String {
        match self {
            Hasher::Sha256(h) => hex::encode(h.serialize()),
            Hasher::Sha512(h) => hex::encode(h.serialize()),
        }
    }

    pub fn restore(algorithm: Algorithm, saved: &str) -> Result<Self, CorruptHashState> {
        let bytes = hex::decode(saved).map_err(|_| CorruptHashState)?;
        Ok(match algorithm {
            Algorithm::Sha256 => Hasher::Sha256(
                sha2::Sha256::deserialize(
                    bytes.as_slice().try_into().map_err(|_| CorruptHashState)?,
                )
                .map_err(|_| CorruptHashState)?,
            ),
            Algorithm::Sha512 => Hasher::Sha512(
                sha2::Sha512::deserialize(
                    bytes.as_slice().try_into().map_err(|_| CorruptHashState)?,
                )
                .map_err(|_| CorruptHashState)?,
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_saved_and_restored_hash_equals_one_pass() {
        for alg in [Algorithm::Sha256, Algorithm::Sha512] {
            let data: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
            let mut h = Hasher::new(alg);
            h.update(&data[..3333]);
            let saved = h.save();
            let mut resumed = Hasher::restore(alg, &saved).unwrap();
            resumed.update(&data[3333..]);
            assert_eq!(resumed.finish(), Digest::of(alg, &data));
        }
        assert!(Hasher::restore(Algorithm::Sha256, "00").is_err());
    }
}
