//! Manifest bodies by digest, kept in memory.
//!
//! Content is addressed by its digest, so a cached body can never go stale: whether a
//! repository may serve it is still decided on every request by its tag pointer or
//! revision link, read fresh from the store, so tags moved or manifests deleted by another
//! process (or replica sharing an S3 bucket) are seen at once. Only bodies that hash to
//! their digest are kept.
//!
//! Bounded by bytes, least recently used out first.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use bytes::Bytes;

use crate::oci::Digest;

/// Memory for cached manifest bodies. Typical manifests are 0.5-10 KiB, so this holds
/// thousands of them.
const CACHE_BYTES: usize = 32 << 20;
/// Rare huge manifests (big indexes) are served from the store rather than evicting
/// hundreds of ordinary ones.
const MAX_ENTRY_BYTES: usize = 1 << 20;
/// What an entry costs besides its body (key, map slots), so that a flood of tiny
/// manifests is bounded too.
const ENTRY_OVERHEAD: usize = 256;

#[derive(Clone)]
pub(super) struct ManifestCache {
    lru: Arc<Mutex<Lru>>,
    budget: usize,
}

#[derive(Default)]
struct Lru {
    entries: HashMap<Digest, Entry>,
    /// Last use → digest; the first key is the least recently used.
    order: BTreeMap<u64, Digest>,
    clock: u64,
    bytes: usize,
}

struct Entry {
    body: Bytes,
    last_use: u64,
}

impl Default for ManifestCache {
    fn default() -> Self {
        ManifestCache::with_budget(CACHE_BYTES)
    }
}

impl ManifestCache {
    fn with_budget(budget: usize) -> Self {
        ManifestCache {
            lru: Arc::default(),
            budget,
        }
    }

    pub fn get(&self, digest: &Digest) -> Option<Bytes> {
        let mut lru = self.lru.lock().unwrap_or_else(|p| p.into_inner());
        let lru = &mut *lru;
        let entry = lru.entries.get_mut(digest)?;
        lru.clock += 1;
        let key = lru
            .order
            .remove(&entry.last_use)
            .unwrap_or_else(|| digest.clone());
        entry.last_use = lru.clock;
        lru.order.insert(lru.clock, key);
        Some(entry.body.clone())
    }

    /// Keeps `body` if it is the content of `digest`.
    pub fn insert(&self, digest: &Digest, body: &Bytes) {
        if body.len() > MAX_ENTRY_BYTES || Digest::of(digest.algorithm(), body) != *digest {
            return;
        }
        let mut lru = self.lru.lock().unwrap_or_else(|p| p.into_inner());
        let lru = &mut *lru;
        if lru.entries.contains_key(digest) {
            return;
        }
        lru.clock += 1;
        lru.entries.insert(
            digest.clone(),
            Entry {
                body: body.clone(),
                last_use: lru.clock,
            },
        );
        lru.order.insert(lru.clock, digest.clone());
        lru.bytes += body.len() + ENTRY_OVERHEAD;
        while lru.bytes > self.budget {
            let Some((_, oldest)) = lru.order.pop_first() else {
                break;
            };
            if let Some(gone) = lru.entries.remove(&oldest) {
                lru.bytes -= gone.body.len() + ENTRY_OVERHEAD;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::Algorithm;

    fn body(n: usize, fill: u8) -> (Digest, Bytes) {
        let b = Bytes::from(vec![fill; n]);
        (Digest::of(Algorithm::Sha256, &b), b)
    }

    #[test]
    fn keeps_verified_bodies_and_evicts_the_least_recently_used() {
        let cache = ManifestCache::with_budget(3 * (1000 + ENTRY_OVERHEAD));
        let (a, b, c, d) = (body(1000, 1), body(1000, 2), body(1000, 3), body(1000, 4));
        for (digest, bytes) in [&a, &b, &c] {
            cache.insert(digest, bytes);
        }
        assert_eq!(cache.get(&a.0), Some(a.1.clone()));
        // b is now the least recently used.
        cache.insert(&d.0, &d.1);
        assert_eq!(cache.get(&b.0), None);
        for (digest, bytes) in [&a, &c, &d] {
            assert_eq!(cache.get(digest).as_ref(), Some(bytes));
        }

        // A body that does not hash to its digest is never kept.
        let (_, other) = body(10, 9);
        cache.insert(&a.0, &other);
        assert_eq!(cache.get(&a.0), Some(a.1.clone()));
        let (e, _) = body(10, 5);
        cache.insert(&e, &other);
        assert_eq!(cache.get(&e), None);

        // Nor one larger than an entry may be.
        let (big, big_body) = body(MAX_ENTRY_BYTES + 1, 7);
        let roomy = ManifestCache::default();
        roomy.insert(&big, &big_body);
        assert_eq!(roomy.get(&big), None);
    }
}
