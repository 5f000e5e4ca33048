//! Every shipped example passes the operator's own validation offline, with the Secrets it
//! names present and its topics on the brokers: a user who applies one is not refused by
//! anything but their cluster.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use sluice_crds::v1alpha1::StreamJob;
use sluice_operator::validate::{Facts, secret_refs, validate};

#[test]
fn every_shipped_example_passes_the_operators_validation() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../manifests/examples");
    let mut seen = Vec::new();
    for entry in std::fs::read_dir(&dir).expect("manifests/examples exists") {
        let path = entry.expect("readable directory").path();
        if path.extension().is_none_or(|e| e != "yaml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("readable example");
        let job: StreamJob = serde_norway::from_str(&text)
            .unwrap_or_else(|e| panic!("{} does not parse: {e}", path.display()));
        // What the user is asked to create beside it: the Secrets and keys it names, and its
        // source topics, with as many partitions as the job has tasks.
        let mut secrets: BTreeMap<String, Option<BTreeSet<String>>> = BTreeMap::new();
        for (_, name, key) in secret_refs(&job.spec) {
            let keys = secrets.entry(name).or_insert_with(|| Some(BTreeSet::new()));
            if let (Some(keys), Some(key)) = (keys, key) {
                keys.insert(key);
            }
        }
        let partitions = job.spec.parallelism.max(1) as u32;
        let facts = Facts {
            secrets,
            source_partitions: Ok(job
                .spec
                .source
                .kafka
                .topics
                .iter()
                .map(|t| (t.clone(), partitions))
                .collect()),
            applied: None,
            applied_partitions: None,
        };
        if let Err(errors) = validate(&job, &facts) {
            panic!("{} is refused by the operator: {errors:#?}", path.display());
        }
        seen.push(
            path.file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned(),
        );
    }
    assert!(seen.len() >= 8, "examples validated: {seen:?}");
    assert!(
        seen.iter().any(|s| s == "filter-route.yaml"),
        "the gs:// example is among them: {seen:?}"
    );
}
