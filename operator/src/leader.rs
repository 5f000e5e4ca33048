//! Leader election on a `coordination.k8s.io` Lease, so two operator replicas never reconcile
//! at once. Network I/O. The holder renews the lease every few seconds; another replica takes
//! it only after it expired. Writes replace the Lease with the resourceVersion read, so two
//! candidates racing for it cannot both win.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::{Api, ObjectMeta, PostParams};
use tracing::info;

/// How long a lease lasts without renewal.
pub const LEASE_DURATION: Duration = Duration::from_secs(15);
/// How often the holder renews.
pub const RENEW_EVERY: Duration = Duration::from_secs(5);

/// A candidate for a Lease.
pub struct Candidate {
    api: Api<Lease>,
    name: String,
    identity: String,
}

impl Candidate {
    /// A candidate `identity` for the Lease `name` in `namespace`.
    pub fn new(client: Client, namespace: &str, name: &str, identity: &str) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            name: name.into(),
            identity: identity.into(),
        }
    }

    /// Waits until this candidate holds the lease.
    pub async fn acquire(&self) -> Result<(), kube::Error> {
        loop {
            if self.try_acquire().await? {
                info!(lease = %self.name, identity = %self.identity, "became the leader");
                return Ok(());
            }
            tokio::time::sleep(RENEW_EVERY).await;
        }
    }

    /// Renews the lease until it is lost (another replica took it, or renewing failed for
    /// longer than the lease lasts); returns then.
    pub async fn hold(&self) -> String {
        let mut last_renewal = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(RENEW_EVERY).await;
            match self.try_acquire().await {
                Ok(true) => last_renewal = tokio::time::Instant::now(),
                Ok(false) => return "another replica holds the lease".into(),
                Err(e) if last_renewal.elapsed() >= LEASE_DURATION => {
                    return format!("could not renew the lease for {LEASE_DURATION:?}: {e}");
                }
                Err(_) => {}
            }
        }
    }

    /// Takes or renews the lease if it is free, expired or ours. False when someone else
    /// holds it (or won a race for it).
    async fn try_acquire(&self) -> Result<bool, kube::Error> {
        let now = Timestamp::now();
        let spec = |transitions: i32, acquired: Option<MicroTime>| LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(LEASE_DURATION.as_secs() as i32),
            acquire_time: acquired.or(Some(MicroTime(now))),
            renew_time: Some(MicroTime(now)),
            lease_transitions: Some(transitions),
            ..LeaseSpec::default()
        };
        let Some(mut lease) = self.api.get_opt(&self.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(spec(0, None)),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                Err(e) => Err(e),
            };
        };
        let current = lease.spec.clone().unwrap_or_default();
        let ours = current.holder_identity.as_deref() == Some(self.identity.as_str());
        let expired = current.renew_time.as_ref().is_none_or(|t| {
            let lasts = current.lease_duration_seconds.unwrap_or(0).max(0) as i64;
            t.0.as_second() + lasts < now.as_second()
        });
        if !ours && !expired {
            return Ok(false);
        }
        let transitions = current.lease_transitions.unwrap_or(0) + i32::from(!ours);
        let acquired = if ours { current.acquire_time } else { None };
        lease.spec = Some(spec(transitions, acquired));
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }
}
