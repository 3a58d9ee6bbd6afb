//! One queue of firings per Trigger, so each Trigger fires in push order while
//! different Triggers fire concurrently. Memory is bounded by construction: a queue
//! holds at most [`DEPTH`] firings (a burst beyond that is left to the leader's
//! catch-up, which fires the newest tag anyway), and the queue of a Trigger that no
//! longer exists is dropped, ending its worker once it drained.

use std::collections::{HashMap, HashSet};

use tokio::sync::mpsc;

/// Firings waiting for one Trigger. Only the newest push matters in the end (an older
/// one never overwrites a newer), so a short queue loses nothing that catch-up does not restore.
pub const DEPTH: usize = 16;

/// Why a firing was not queued.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum NotQueued {
    #[error("{DEPTH} firings are already waiting for this Trigger")]
    Full,
}

pub struct Queues<T> {
    queues: HashMap<String, mpsc::Sender<T>>,
}

impl<T> Default for Queues<T> {
    fn default() -> Self {
        Queues {
            queues: HashMap::new(),
        }
    }
}

impl<T> Queues<T> {
    /// Queues `item` for the Trigger `key`, starting its worker with `spawn` (which takes
    /// the receiving end) when it has none running.
    pub fn send(
        &mut self,
        key: &str,
        item: T,
        spawn: impl FnOnce(mpsc::Receiver<T>),
    ) -> Result<(), NotQueued> {
        let queue = match self.queues.get(key) {
            Some(queue) if !queue.is_closed() => queue,
            _ => {
                let (tx, rx) = mpsc::channel(DEPTH);
                spawn(rx);
                self.queues
                    .entry(key.to_string())
                    .insert_entry(tx)
                    .into_mut()
            }
        };
        queue.try_send(item).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) | mpsc::error::TrySendError::Closed(_) => {
                NotQueued::Full
            }
        })
    }

    /// Keeps only the queues of the Triggers in `live`.
    pub fn retain(&mut self, live: &HashSet<String>) {
        self.queues.retain(|key, _| live.contains(key));
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.queues.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_queue_holds_at_most_its_depth_and_refuses_the_rest() {
        let mut queues = Queues::default();
        let mut receivers = Vec::new();
        for i in 0..DEPTH {
            queues.send("ns/t", i, |rx| receivers.push(rx)).unwrap();
        }
        assert_eq!(
            queues.send("ns/t", DEPTH, |_| unreachable!()),
            Err(NotQueued::Full)
        );
        assert_eq!(receivers.len(), 1, "one worker per Trigger");
        receivers[0].try_recv().unwrap();
        assert_eq!(queues.send("ns/t", 0, |_| unreachable!()), Ok(()));
    }

    #[test]
    fn the_queues_of_triggers_that_are_gone_are_dropped_and_their_workers_end() {
        let mut queues = Queues::default();
        let mut receivers = Vec::new();
        for i in 0..100 {
            queues
                .send(&format!("ns/t{i}"), i, |rx| receivers.push(rx))
                .unwrap();
        }
        let live: HashSet<String> = ["ns/t7".to_string()].into();
        queues.retain(&live);
        assert_eq!(queues.len(), 1);
        // A dropped queue's worker drains what was queued, then sees the end.
        assert_eq!(receivers[3].try_recv(), Ok(3));
        assert_eq!(
            receivers[3].try_recv(),
            Err(mpsc::error::TryRecvError::Disconnected)
        );
        assert_eq!(receivers[7].try_recv(), Ok(7));
        assert_eq!(
            receivers[7].try_recv(),
            Err(mpsc::error::TryRecvError::Empty)
        );
    }

    #[test]
    fn a_trigger_whose_worker_ended_gets_a_new_one() {
        let mut queues = Queues::default();
        let mut receivers = Vec::new();
        queues.send("ns/t", 1, |rx| receivers.push(rx)).unwrap();
        drop(receivers.pop());
        queues.send("ns/t", 2, |rx| receivers.push(rx)).unwrap();
        assert_eq!(receivers.len(), 1);
        assert_eq!(queues.len(), 1);
    }
}
