//! Pushes, announced in process: controllers (status, triggers, sync) react to a push
//! at once instead of waiting for their next resync. With replicas sharing a bucket,
//! each push this process takes also goes to an outbox that `crate::replicas` writes
//! to the bucket's push log, and the leader delivers the other replicas' pushes here
//! ([`PushEvents::deliver_from_replica`]) — not into the outbox again.

use tokio::sync::{broadcast, mpsc};

use crate::oci::{Digest, RepositoryName};

/// Pushes that may wait for the push log writer; past this, one is dropped (and
/// counted by the writer): the leader's catch-up finds it.
pub const OUTBOX: usize = 1024;

/// A manifest committed under a repository (and tags, if it was pushed by tag).
#[derive(Debug, Clone)]
pub struct PushEvent {
    pub repository: RepositoryName,
    pub digest: Digest,
    pub tags: Vec<String>,
    /// When the manifest was committed: the start of a trigger's push-to-patch latency.
    pub pushed_at: jiff::Timestamp,
}

/// The sending side; cheap to clone. Without subscribers an event is simply dropped.
#[derive(Clone)]
pub struct PushEvents {
    local: broadcast::Sender<PushEvent>,
    outbox: Option<mpsc::Sender<PushEvent>>,
}

impl Default for PushEvents {
    fn default() -> Self {
        PushEvents {
            local: broadcast::channel(1024).0,
            outbox: None,
        }
    }
}

impl PushEvents {
    /// Announcements that also leave this process: each push taken here is queued on
    /// the returned receiver, for the push log.
    pub fn with_outbox() -> (Self, mpsc::Receiver<PushEvent>) {
        let (tx, rx) = mpsc::channel(OUTBOX);
        let events = PushEvents {
            outbox: Some(tx),
            ..PushEvents::default()
        };
        (events, rx)
    }

    /// Announces a push this process took.
    pub fn publish(&self, event: PushEvent) {
        if let Some(outbox) = &self.outbox
            && outbox.try_send(event.clone()).is_err()
        {
            tracing::warn!(repository = %event.repository, "push log outbox full: other replicas learn of this push at their next catch-up");
        }
        let _ = self.local.send(event);
    }

    /// Announces here a push another replica took (read from the push log).
    pub fn deliver_from_replica(&self, event: PushEvent) {
        let _ = self.local.send(event);
    }

    pub fn subscribe(&self) -> broadcast::Receiver<PushEvent> {
        self.local.subscribe()
    }

    /// A stream of `()` per push (or per burst a slow reader missed), for
    /// `Controller::reconcile_all_on`.
    pub fn ticks(&self) -> impl futures::Stream<Item = ()> + Send + 'static {
        futures::stream::unfold(self.subscribe(), |mut rx| async move {
            match rx.recv().await {
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => Some(((), rx)),
                Err(broadcast::error::RecvError::Closed) => None,
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(tag: &str) -> PushEvent {
        PushEvent {
            repository: "team/app".parse().unwrap(),
            digest: format!("sha256:{}", "ab".repeat(32)).parse().unwrap(),
            tags: vec![tag.into()],
            pushed_at: jiff::Timestamp::now(),
        }
    }

    #[test]
    fn own_pushes_go_to_the_outbox_and_other_replicas_pushes_do_not() {
        let (events, mut outbox) = PushEvents::with_outbox();
        let mut local = events.subscribe();
        events.publish(event("mine"));
        events.deliver_from_replica(event("theirs"));
        assert_eq!(outbox.try_recv().unwrap().tags, ["mine"]);
        assert!(
            outbox.try_recv().is_err(),
            "a delivered push is not logged again"
        );
        assert_eq!(local.try_recv().unwrap().tags, ["mine"]);
        assert_eq!(local.try_recv().unwrap().tags, ["theirs"]);
    }
}
