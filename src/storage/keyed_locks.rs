//! Async locks by name, made on demand: one per upload session, one per repository's
//! tags. An entry lives only while a request holds or awaits it, so names that come
//! from requests (a flood of made-up session ids) leave nothing behind.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

type Locks = Arc<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>;

#[derive(Clone, Default)]
pub struct KeyedLocks(Locks);

/// Holds one name's lock; dropping it removes the entry when nobody else waits.
pub struct KeyedGuard {
    locks: Locks,
    key: String,
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl Drop for KeyedGuard {
    fn drop(&mut self) {
        drop(self.guard.take());
        let mut map = self.locks.lock().expect("lock map poisoned");
        // The map's own reference is the only one left: no request holds or awaits it.
        if map
            .get(&self.key)
            .is_some_and(|l| Arc::strong_count(l) == 1)
        {
            map.remove(&self.key);
        }
    }
}

impl KeyedLocks {
    pub async fn lock(&self, key: &str) -> KeyedGuard {
        let lock = self
            .0
            .lock()
            .expect("lock map poisoned")
            .entry(key.to_string())
            .or_default()
            .clone();
        let guard = lock.lock_owned().await;
        KeyedGuard {
            locks: self.0.clone(),
            key: key.to_string(),
            guard: Some(guard),
        }
    }

    /// Whether a request of this process holds `key` now.
    pub fn is_busy(&self, key: &str) -> bool {
        self.0
            .lock()
            .expect("lock map poisoned")
            .get(key)
            .is_some_and(|lock| lock.try_lock().is_err())
    }

    /// Names with an entry now (held or awaited).
    pub fn held(&self) -> usize {
        self.0.lock().expect("lock map poisoned").len()
    }
}
