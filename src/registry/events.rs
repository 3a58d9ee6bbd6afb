//! Pushes, announced in process: controllers (status, triggers, and later sync)
//! react to a push at once instead of waiting for their next resync.

use tokio::sync::broadcast;

use crate::oci::{Digest, RepositoryName};

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
pub struct PushEvents(broadcast::Sender<PushEvent>);

impl Default for PushEvents {
    fn default() -> Self {
        PushEvents(broadcast::channel(1024).0)
    }
}

impl PushEvents {
    pub fn publish(&self, event: PushEvent) {
        let _ = self.0.send(event);
    }

    pub fn subscribe(&self) -> broadcast::Receiver<PushEvent> {
        self.0.subscribe()
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
