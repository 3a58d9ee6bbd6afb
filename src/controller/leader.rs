//! Leader election on a `coordination.k8s.io` Lease: every replica serves the
//! registry, only the holder of the Lease reconciles.
//!
//! Whether another replica's lease expired is decided as client-go does: from how long
//! this replica has seen the lease record unchanged, on its own monotonic clock. The
//! `renewTime` written by another node is never compared with the local clock, so
//! clock skew between nodes can neither steal a live lease nor keep a dead one.

use std::time::{Duration, Instant};

use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};
use tokio::sync::watch;

pub struct LeaderElection {
    api: Api<Lease>,
    name: String,
    identity: String,
    lease_duration: Duration,
    renew_every: Duration,
    observed: Option<Observed>,
}

/// The part of a lease that changes whenever its holder renews it.
#[derive(Debug, Clone, PartialEq)]
struct LeaseRecord {
    holder: String,
    renew_time: Option<Timestamp>,
    acquire_time: Option<Timestamp>,
    transitions: i32,
    duration: Duration,
}

impl LeaseRecord {
    fn of(spec: &LeaseSpec) -> Self {
        LeaseRecord {
            holder: spec.holder_identity.clone().unwrap_or_default(),
            renew_time: spec.renew_time.as_ref().map(|t| t.0),
            acquire_time: spec.acquire_time.as_ref().map(|t| t.0),
            transitions: spec.lease_transitions.unwrap_or(0),
            duration: Duration::from_secs(spec.lease_duration_seconds.unwrap_or(15).max(1) as u64),
        }
    }
}

/// A lease record, and when this replica first saw it as it is.
#[derive(Debug, Clone)]
struct Observed {
    record: LeaseRecord,
    since: Instant,
}

impl Observed {
    /// Notes the record read at `now`: the clock restarts only when the record changed.
    fn update(previous: Option<Observed>, record: LeaseRecord, now: Instant) -> Observed {
        match previous {
            Some(seen) if seen.record == record => seen,
            _ => Observed { record, since: now },
        }
    }

    /// Whether the holder has had a full lease duration, by this replica's clock, to renew
    /// and did not. A lease without a holder was released and is free at once.
    fn expired(&self, now: Instant) -> bool {
        self.record.holder.is_empty()
            || now.saturating_duration_since(self.since) > self.record.duration
    }
}

impl LeaderElection {
    pub fn new(client: Client, namespace: &str, name: &str, identity: &str) -> Self {
        LeaderElection {
            api: Api::namespaced(client, namespace),
            name: name.to_string(),
            identity: identity.to_string(),
            lease_duration: Duration::from_secs(15),
            renew_every: Duration::from_secs(2),
            observed: None,
        }
    }

    /// Tries to acquire or renew the lease forever, publishing whether this replica leads.
    pub async fn run(mut self, leading: watch::Sender<bool>) {
        let mut last_renewal: Option<std::time::Instant> = None;
        loop {
            match self.try_acquire_or_renew().await {
                Ok(true) => {
                    last_renewal = Some(std::time::Instant::now());
                    if !*leading.borrow() {
                        tracing::info!(lease = %self.name, identity = %self.identity, "became leader");
                    }
                    leading.send_replace(true);
                }
                Ok(false) => {
                    if *leading.borrow() {
                        tracing::warn!(lease = %self.name, "lost leadership");
                    }
                    leading.send_replace(false);
                }
                Err(e) => {
                    tracing::warn!(lease = %self.name, error = %e, "leader election request failed");
                    // Without a renewal inside the lease duration another replica may take over.
                    if last_renewal.is_none_or(|t| t.elapsed() >= self.lease_duration)
                        && *leading.borrow()
                    {
                        tracing::warn!("could not renew the lease in time; stepping down");
                        leading.send_replace(false);
                    }
                }
            }
            tokio::time::sleep(self.renew_every).await;
        }
    }

    fn spec(&self, acquire: Option<MicroTime>, transitions: i32) -> LeaseSpec {
        let now = MicroTime(Timestamp::now());
        LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(self.lease_duration.as_secs() as i32),
            acquire_time: Some(acquire.unwrap_or_else(|| now.clone())),
            renew_time: Some(now),
            lease_transitions: Some(transitions),
            ..Default::default()
        }
    }

    async fn try_acquire_or_renew(&mut self) -> Result<bool, kube::Error> {
        let Some(lease) = self.api.get_opt(&self.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    ..Default::default()
                },
                spec: Some(self.spec(None, 0)),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(false), // someone else was faster
                Err(e) => Err(e),
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().unwrap_or_default();
        let transitions = spec.lease_transitions.unwrap_or(0);
        let new_spec = if holder == self.identity {
            self.spec(spec.acquire_time.clone(), transitions)
        } else {
            let observed =
                Observed::update(self.observed.take(), LeaseRecord::of(&spec), Instant::now());
            let expired = observed.expired(Instant::now());
            self.observed = Some(observed);
            if !expired {
                return Ok(false);
            }
            self.spec(None, transitions + 1)
        };
        // Replacing with the read resourceVersion is a compare-and-swap: if another
        // replica wrote in between, this fails with 409 and we are not the leader.
        let updated = Lease {
            metadata: lease.metadata.clone(),
            spec: Some(new_spec),
        };
        match self
            .api
            .replace(&self.name, &PostParams::default(), &updated)
            .await
        {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(holder: &str, renewed: &str) -> LeaseRecord {
        LeaseRecord {
            holder: holder.into(),
            renew_time: Some(renewed.parse().unwrap()),
            acquire_time: None,
            transitions: 3,
            duration: Duration::from_secs(15),
        }
    }

    #[test]
    fn a_renew_time_far_in_the_past_by_the_local_clock_does_not_expire_a_lease_seen_just_now() {
        let start = Instant::now();
        let seen = Observed::update(None, record("other", "1999-01-01T00:00:00Z"), start);
        assert!(!seen.expired(start + Duration::from_secs(1)));
        assert!(!seen.expired(start + Duration::from_secs(15)));
        assert!(seen.expired(start + Duration::from_secs(16)));
    }

    #[test]
    fn a_renew_time_far_in_the_future_does_not_keep_an_unrenewed_lease_alive() {
        let start = Instant::now();
        let seen = Observed::update(None, record("other", "2999-01-01T00:00:00Z"), start);
        let later = start + Duration::from_secs(16);
        let seen = Observed::update(Some(seen), record("other", "2999-01-01T00:00:00Z"), later);
        assert!(seen.expired(later));
    }

    #[test]
    fn each_renewal_restarts_the_local_clock() {
        let start = Instant::now();
        let mut seen = Observed::update(None, record("other", "2026-01-01T00:00:00Z"), start);
        for step in 1..=10u64 {
            let at = start + Duration::from_secs(10 * step);
            let renewed = format!("2026-01-01T00:00:{:02}Z", step * 5);
            seen = Observed::update(Some(seen), record("other", &renewed), at);
            assert!(!seen.expired(at + Duration::from_secs(14)), "step {step}");
        }
    }

    #[test]
    fn a_released_lease_is_free_at_once() {
        let start = Instant::now();
        let seen = Observed::update(None, record("", "2026-01-01T00:00:00Z"), start);
        assert!(seen.expired(start));
    }
}
