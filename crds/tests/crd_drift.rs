//! The committed `crds/streamjob.yaml` is exactly what the code generates.

#[test]
fn committed_crd_matches_the_generated_one() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("streamjob.yaml");
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    let generated = sluice_crds::crd_yaml();
    if committed != generated {
        let first_difference = committed
            .lines()
            .zip(generated.lines())
            .enumerate()
            .find(|(_, (c, g))| c != g)
            .map(|(i, (c, g))| format!("line {}:\n  committed: {c}\n  generated: {g}", i + 1))
            .unwrap_or_else(|| "the files differ in length".into());
        panic!(
            "crds/streamjob.yaml is stale; regenerate it with \
             `cargo run -p sluice-crds --bin crdgen`.\nFirst difference at {first_difference}"
        );
    }
}
