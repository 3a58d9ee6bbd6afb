//! Per-object exponential backoff for failed reconciles: a flapping object is retried
//! quickly at first, then less and less often, without a fixed requeue for everyone.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

const FIRST: Duration = Duration::from_millis(500);
const MAX: Duration = Duration::from_secs(300);

#[derive(Default)]
pub struct Backoff(Mutex<HashMap<String, u32>>);

impl Backoff {
    /// The delay before retrying `key` after one more failure.
    pub fn next(&self, key: &str) -> Duration {
        let mut failures = self.0.lock().expect("backoff lock poisoned");
        let n = failures.entry(key.to_string()).or_insert(0);
        *n = n.saturating_add(1);
        FIRST.saturating_mul(2u32.saturating_pow(*n - 1)).min(MAX)
    }

    /// Forgets `key`'s failures after a success.
    pub fn reset(&self, key: &str) {
        self.0.lock().expect("backoff lock poisoned").remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_a_cap_and_resets() {
        let b = Backoff::default();
        assert_eq!(b.next("a"), Duration::from_millis(500));
        assert_eq!(b.next("a"), Duration::from_secs(1));
        assert_eq!(b.next("a"), Duration::from_secs(2));
        for _ in 0..20 {
            b.next("a");
        }
        assert_eq!(b.next("a"), MAX);
        b.reset("a");
        assert_eq!(b.next("a"), FIRST);
        assert_eq!(b.next("b"), FIRST);
    }
}
