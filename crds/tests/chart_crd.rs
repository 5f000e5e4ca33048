//! The CRD shipped by the Helm chart and by the kustomize base is exactly the generated one, so
//! `helm install`, `helm upgrade` and `kubectl apply -k` install the schema the code was built with.

use std::path::Path;

#[test]
fn the_chart_and_the_kustomize_base_ship_the_generated_crd_byte_for_byte() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let generated = sluice_crds::crd_yaml();
    let mut stale = Vec::new();
    for copy in [
        "charts/sluice/files/crds/streamjob.yaml",
        "manifests/base/crd/streamjob.yaml",
    ] {
        let shipped = std::fs::read_to_string(root.join(copy)).unwrap_or_default();
        if shipped != generated {
            stale.push(copy);
        }
    }
    assert!(
        stale.is_empty(),
        "{stale:?} differ from the generated CRD; regenerate crds/streamjob.yaml with \
         `cargo run -p sluice-crds --bin crdgen`, then copy it with manifests/generate.sh"
    );
}
