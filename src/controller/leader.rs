//! Leader election on a `coordination.k8s.io` Lease: every replica serves the
//! registry, only the holder of the Lease reconciles.

use std::time::Duration;

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
}

impl LeaderElection {
    pub fn new(client: Client, namespace: &str, name: &str, identity: &str) -> Self {
        LeaderElection {
            api: Api::namespaced(client, namespace),
            name: name.to_string(),
            identity: identity.to_string(),
            lease_duration: Duration::from_secs(15),
            renew_every: Duration::from_secs(2),
        }
    }

    /// Tries to acquire or renew the lease forever, publishing whether this replica leads.
    pub async fn run(self, leading: watch::Sender<bool>) {
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

    async fn try_acquire_or_renew(&self) -> Result<bool, kube::Error> {
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
            let duration =
                Duration::from_secs(spec.lease_duration_seconds.unwrap_or(15).max(1) as u64);
            let expired = match &spec.renew_time {
                None => true,
                Some(renewed) => {
                    let age = Timestamp::now().duration_since(renewed.0);
                    age.as_secs_f64() > duration.as_secs_f64()
                }
            };
            if !holder.is_empty() && !expired {
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
