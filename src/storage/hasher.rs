//! A digest computation that can be suspended into bytes and resumed, so a chunked
//! upload carries its hash state from one request to the next (and across restarts,
//! or to another replica) without re-reading what it already has.
//!
//! The saved form is berth's own, versioned: the hash crate's serialisation promises no
//! stability between releases, and a state misread after an upgrade would give a wrong
//! digest. Only the block functions come from `sha2`; the bookkeeping around them (the
//! length, the partial block, the padding of FIPS 180-4 §5.1) is here.
//!
//! Format `v1`: `"v1:"` then hex of the eight state words (big-endian), the number of
//! bytes hashed (u64, big-endian) and the partial block (`length % block size` bytes).

use sha2::block_api::{compress256, compress512};

use crate::oci::{Algorithm, Digest};

const FORMAT: &str = "v1";

/// Why a saved state cannot be resumed. Neither is ever turned into a digest.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HashStateError {
    /// Written by another version of berth (or, without a version, before states had
    /// one): the upload must start again.
    #[error("saved hash state has format {0:?}, which this version of berth does not read")]
    UnknownFormat(String),
    #[error("saved hash state is corrupt: {0}")]
    Corrupt(&'static str),
}

/// One SHA-2 variant's running state: words, length, and the bytes of a block not yet
/// full. Whole blocks go from the caller's slice straight to the block function.
macro_rules! engine {
    ($name:ident, $word:ty, $block:literal, $bit_len:ty, $compress:ident, $init:expr) => {
        #[derive(Clone)]
        pub struct $name {
            words: [$word; 8],
            /// Bytes hashed so far; the partial block holds `len % BLOCK` of them.
            len: u64,
            partial: [u8; $block],
        }

        impl $name {
            const BLOCK: usize = $block;
            const WORD: usize = size_of::<$word>();

            fn new() -> Self {
                $name {
                    words: $init,
                    len: 0,
                    partial: [0; $block],
                }
            }

            fn partial_len(&self) -> usize {
                (self.len % Self::BLOCK as u64) as usize
            }

            fn update(&mut self, mut data: &[u8]) {
                let filled = self.partial_len();
                self.len += data.len() as u64;
                if filled > 0 {
                    let take = (Self::BLOCK - filled).min(data.len());
                    self.partial[filled..filled + take].copy_from_slice(&data[..take]);
                    data = &data[take..];
                    if filled + take < Self::BLOCK {
                        return;
                    }
                    $compress(&mut self.words, &[self.partial]);
                }
                let (blocks, rest) = data.as_chunks::<$block>();
                if !blocks.is_empty() {
                    $compress(&mut self.words, blocks);
                }
                self.partial[..rest.len()].copy_from_slice(rest);
            }

            /// Pads as FIPS 180-4 §5.1 says: a 1 bit, zeros, the length in bits.
            fn finish(mut self) -> Vec<u8> {
                let filled = self.partial_len();
                let bit_len = <$bit_len>::from(self.len).wrapping_mul(8).to_be_bytes();
                let mut last = [[0u8; $block]; 2];
                last[0][..filled].copy_from_slice(&self.partial[..filled]);
                last[0][filled] = 0x80;
                let blocks = if filled + 1 + bit_len.len() <= Self::BLOCK {
                    1
                } else {
                    2
                };
                last[blocks - 1][Self::BLOCK - bit_len.len()..].copy_from_slice(&bit_len);
                $compress(&mut self.words, &last[..blocks]);
                self.words.iter().flat_map(|w| w.to_be_bytes()).collect()
            }

            fn save(&self) -> Vec<u8> {
                let mut out = Vec::with_capacity(8 * Self::WORD + 8 + Self::BLOCK);
                for w in self.words {
                    out.extend_from_slice(&w.to_be_bytes());
                }
                out.extend_from_slice(&self.len.to_be_bytes());
                out.extend_from_slice(&self.partial[..self.partial_len()]);
                out
            }

            fn restore(bytes: &[u8]) -> Result<Self, HashStateError> {
                let head = 8 * Self::WORD + 8;
                if bytes.len() < head {
                    return Err(HashStateError::Corrupt("too short"));
                }
                let (words_bytes, rest) = bytes.split_at(8 * Self::WORD);
                let (len_bytes, partial) = rest.split_at(8);
                let mut words = [0; 8];
                for (w, b) in words.iter_mut().zip(words_bytes.chunks_exact(Self::WORD)) {
                    *w = <$word>::from_be_bytes(b.try_into().expect("chunks of one word"));
                }
                let len = u64::from_be_bytes(len_bytes.try_into().expect("eight bytes"));
                let mut state = $name {
                    words,
                    len,
                    partial: [0; $block],
                };
                if partial.len() != state.partial_len() {
                    return Err(HashStateError::Corrupt(
                        "partial block does not match the length",
                    ));
                }
                state.partial[..partial.len()].copy_from_slice(partial);
                Ok(state)
            }
        }
    };
}

engine!(
    Sha256State,
    u32,
    64,
    u64,
    compress256,
    [
        0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab,
        0x5be0cd19,
    ]
);

engine!(
    Sha512State,
    u64,
    128,
    u128,
    compress512,
    [
        0x6a09e667f3bcc908,
        0xbb67ae8584caa73b,
        0x3c6ef372fe94f82b,
        0xa54ff53a5f1d36f1,
        0x510e527fade682d1,
        0x9b05688c2b3e6c1f,
        0x1f83d9abfb41bd6b,
        0x5be0cd19137e2179,
    ]
);

#[derive(Clone)]
pub enum Hasher {
    Sha256(Sha256State),
    Sha512(Sha512State),
}

impl Hasher {
    pub fn new(algorithm: Algorithm) -> Self {
        match algorithm {
            Algorithm::Sha256 => Hasher::Sha256(Sha256State::new()),
            Algorithm::Sha512 => Hasher::Sha512(Sha512State::new()),
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
        let (algorithm, bytes) = match self {
            Hasher::Sha256(h) => (Algorithm::Sha256, h.finish()),
            Hasher::Sha512(h) => (Algorithm::Sha512, h.finish()),
        };
        Digest::new(algorithm, &hex::encode(bytes))
            .expect("a hash is always valid hex of the right length")
    }

    /// The state in berth's versioned format, for storing in an upload's state object.
    pub fn save(&self) -> String {
        let bytes = match self {
            Hasher::Sha256(h) => h.save(),
            Hasher::Sha512(h) => h.save(),
        };
        format!("{FORMAT}:{}", hex::encode(bytes))
    }

    /// Resumes a state from [`Hasher::save`]. A state of another format (a later
    /// version's, or an unversioned one from before formats existed) is refused, never
    /// guessed at.
    pub fn restore(algorithm: Algorithm, saved: &str) -> Result<Self, HashStateError> {
        let Some(body) = saved.strip_prefix(FORMAT).and_then(|s| s.strip_prefix(':')) else {
            let format = match saved.split_once(':') {
                Some((version, _)) => version.chars().take(16).collect(),
                None => "unversioned".to_string(),
            };
            return Err(HashStateError::UnknownFormat(format));
        };
        let bytes = hex::decode(body).map_err(|_| HashStateError::Corrupt("not hex"))?;
        Ok(match algorithm {
            Algorithm::Sha256 => Hasher::Sha256(Sha256State::restore(&bytes)?),
            Algorithm::Sha512 => Hasher::Sha512(Sha512State::restore(&bytes)?),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i % 251) as u8).collect()
    }

    #[test]
    fn one_pass_equals_sha2_at_every_padding_boundary() {
        for alg in [Algorithm::Sha256, Algorithm::Sha512] {
            // Every length up to three blocks crosses each padding case: room for the
            // length in the last block, or not.
            for len in 0..400 {
                let data = data(len);
                let mut h = Hasher::new(alg);
                h.update(&data);
                assert_eq!(h.finish(), Digest::of(alg, &data), "{alg:?} {len}");
            }
        }
    }

    #[test]
    fn a_saved_and_restored_hash_equals_one_pass() {
        for alg in [Algorithm::Sha256, Algorithm::Sha512] {
            let data = data(10_000);
            let mut h = Hasher::new(alg);
            h.update(&data[..3333]);
            let saved = h.save();
            assert!(saved.starts_with("v1:"));
            let mut resumed = Hasher::restore(alg, &saved).unwrap();
            resumed.update(&data[3333..]);
            assert_eq!(resumed.finish(), Digest::of(alg, &data));
        }
    }

    #[test]
    fn states_of_other_formats_are_refused_by_name() {
        // What sha2 0.11's own serialisation of a fresh SHA-256 looked like, as stored
        // by earlier berths: hex without a version.
        let legacy =
            "67e6096a85ae67bb72f36e3c3af54fa57f520e518c68059babd9831f19cde05b0000000000000000";
        assert_eq!(
            Hasher::restore(Algorithm::Sha256, legacy).err(),
            Some(HashStateError::UnknownFormat("unversioned".into()))
        );
        assert_eq!(
            Hasher::restore(Algorithm::Sha256, "v2:00").err(),
            Some(HashStateError::UnknownFormat("v2".into()))
        );
    }

    #[test]
    fn corrupt_v1_states_are_refused() {
        let mut h = Hasher::new(Algorithm::Sha256);
        h.update(b"abc");
        let saved = h.save();
        for bad in [
            "v1:".to_string(),
            "v1:zz".to_string(),
            saved[..saved.len() - 2].to_string(),
            format!("{saved}00"),
        ] {
            assert!(
                matches!(
                    Hasher::restore(Algorithm::Sha256, &bad),
                    Err(HashStateError::Corrupt(_))
                ),
                "{bad}"
            );
        }
        assert!(Hasher::restore(Algorithm::Sha512, &saved).is_err());
    }
}
