//! Async locks by name, made on demand: one per upload session, one per tag-writing
//! scope. An entry lives only while some request holds or waits for it (the last guard
//! to go removes it, also when a request is cancelled while it waits), so the map is
//! bounded by the requests in flight, whatever names clients make up.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

struct Entry {
    lock: Arc<tokio::sync::Mutex<()>>,
    /// Requests holding or waiting for the lock; the entry goes when this reaches 0.
    users: usize,
}

type Map = Arc<Mutex<HashMap<String, Entry>>>;

#[derive(Clone, Default)]
pub struct KeyedLocks(Map);

/// Holds one name's lock for a request; dropping it frees the name. Counted as a user
/// from before it waits, so a request cancelled while waiting also cleans up.
pub struct KeyedGuard {
    map: Map,
    key: String,
    held: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl KeyedLocks {
    pub async fn lock(&self, key: &str) -> KeyedGuard {
        let lock = {
            let mut map = self.0.lock().expect("lock map poisoned");
            let entry = map.entry(key.to_string()).or_insert_with(|| Entry {
                lock: Arc::default(),
                users: 0,
            });
            entry.users += 1;
            entry.lock.clone()
        };
        let mut guard = KeyedGuard {
            map: self.0.clone(),
            key: key.to_string(),
            held: None,
        };
        guard.held = Some(lock.lock_owned().await);
        guard
    }

    /// Whether a request of this process holds `key` now.
    pub fn is_busy(&self, key: &str) -> bool {
        self.0
            .lock()
            .expect("lock map poisoned")
            .get(key)
            .is_some_and(|entry| entry.lock.try_lock().is_err())
    }

    /// Names with a request holding or waiting for them.
    pub fn in_use(&self) -> usize {
        self.0.lock().expect("lock map poisoned").len()
    }
}

impl Drop for KeyedGuard {
    fn drop(&mut self) {
        let mut map = self.map.lock().expect("lock map poisoned");
        drop(self.held.take());
        if let Some(entry) = map.get_mut(&self.key) {
            entry.users -= 1;
            if entry.users == 0 {
                map.remove(&self.key);
            }
        }
    }
}
