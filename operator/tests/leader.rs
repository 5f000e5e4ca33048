//! Leader election against a scripted API: who gets the Lease, when, with which requests.

mod api;

use std::time::Duration;

use serde_json::json;
use sluice_operator::leader::Candidate;
use sluice_operator::rbac;

use api::ScriptedApi;

const LEASE: &str = "/apis/coordination.k8s.io/v1/namespaces/sluice-system/leases/sluice-operator";

fn lease_requests_are_granted(api: &ScriptedApi) -> Vec<String> {
    let requests = api.take_requests();
    for r in &requests {
        let (group, resource, verb) = r.permission();
        assert!(
            rbac::needed(&group, &resource, &verb),
            "{} is not granted",
            r.line()
        );
    }
    requests.iter().map(api::Recorded::line).collect()
}

#[tokio::test]
async fn the_first_candidate_creates_the_lease_and_a_second_waits_until_it_expires() {
    let api = ScriptedApi::default();
    let a = Candidate::new(
        api.client(),
        "sluice-system",
        "sluice-operator",
        "operator-a",
    );
    a.acquire().await.expect("a leads");
    assert_eq!(
        lease_requests_are_granted(&api),
        [
            "GET /apis/coordination.k8s.io/v1/namespaces/sluice-system/leases/sluice-operator",
            "POST /apis/coordination.k8s.io/v1/namespaces/sluice-system/leases",
        ]
    );
    assert_eq!(
        api.get(LEASE).expect("lease")["spec"]["holderIdentity"],
        "operator-a"
    );

    // b cannot take a lease a renewed just now.
    let b = Candidate::new(
        api.client(),
        "sluice-system",
        "sluice-operator",
        "operator-b",
    );
    let waited = tokio::time::timeout(Duration::from_millis(500), b.acquire()).await;
    assert!(waited.is_err(), "b must not lead while a's lease is fresh");
    assert_eq!(
        api.get(LEASE).expect("lease")["spec"]["holderIdentity"],
        "operator-a"
    );
    api.take_requests();

    // a stops renewing: once the lease is older than its duration, b takes it over.
    let mut lease = api.get(LEASE).expect("lease");
    lease["spec"]["renewTime"] = json!("2026-01-01T00:00:00.000000Z");
    api.put(LEASE, lease);
    b.acquire().await.expect("b leads");
    assert_eq!(
        lease_requests_are_granted(&api),
        [
            "GET /apis/coordination.k8s.io/v1/namespaces/sluice-system/leases/sluice-operator",
            "PUT /apis/coordination.k8s.io/v1/namespaces/sluice-system/leases/sluice-operator",
        ]
    );
    let lease = api.get(LEASE).expect("lease");
    assert_eq!(lease["spec"]["holderIdentity"], "operator-b");
    assert_eq!(lease["spec"]["leaseTransitions"], 1);
}

#[tokio::test]
async fn a_write_based_on_a_stale_read_loses_the_race() {
    let api = ScriptedApi::default();
    api.put(
        LEASE,
        json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": "sluice-operator"},
               "spec": {"holderIdentity": "operator-a", "leaseDurationSeconds": 15, "renewTime": "2026-01-01T00:00:00.000000Z"}}),
    );
    // Both candidates read the expired lease; only the first replace succeeds.
    let b = Candidate::new(
        api.client(),
        "sluice-system",
        "sluice-operator",
        "operator-b",
    );
    let c = Candidate::new(
        api.client(),
        "sluice-system",
        "sluice-operator",
        "operator-c",
    );
    let (rb, rc) = tokio::join!(
        tokio::time::timeout(Duration::from_millis(300), b.acquire()),
        tokio::time::timeout(Duration::from_millis(300), c.acquire()),
    );
    assert_eq!(
        u8::from(rb.is_ok()) + u8::from(rc.is_ok()),
        1,
        "exactly one candidate leads"
    );
}
