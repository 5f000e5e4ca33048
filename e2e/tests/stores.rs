//! The checkpoint stores besides S3, each against a real emulator started by `e2e/env/up.sh`:
//! Azure Blob Storage (Azurite) and GCS (gcp-storage-emulator).
//!
//! Azurite implements ETag preconditions, so HEAD is fenced there as on S3: these tests write
//! HEAD through the store's own client, and the checkpoint crash and zombie tests run on it too
//! (`checkpoint_crash.rs`, `zombie.rs`). The GCS emulator does not: it answers a write with
//! neither an ETag nor a generation (which `object_store`'s client refuses, so nothing can be
//! written through it) and takes `x-goog-if-generation-match` writes whatever the generation
//! (shown with curl when it was probed), so a worker must refuse it at start, and the backend
//! is tested here as far as the emulator serves it: not-found answers (its GET of an object
//! lacks `Last-Modified`, which the client also refuses). On real GCS the same client writes
//! HEAD on its generation (`x-goog-if-generation-match`).

use std::time::Duration;

use sluice_e2e::cluster::{Workers, create_topic, scratch_dir, write_materialize_job_on};
use sluice_e2e::{Store, TestEnv, unique_name};
use sluice_worker::checkpoint::descriptor::{Epoch, Head, ReportedState, TaskReport};
use sluice_worker::checkpoint::layout::JobLayout;
use sluice_worker::checkpoint::store::{CheckpointStore, HeadVersion, StoreError, StoreOptions};

fn open(env: &TestEnv, store: Store, name: &str) -> (CheckpointStore, JobLayout) {
    let (uri, endpoint) = env.storage(store, name);
    let options = StoreOptions {
        endpoint: Some(endpoint),
        ..Default::default()
    };
    let store = CheckpointStore::open(&uri, &options).expect("open the store");
    let layout = JobLayout::new(store.prefix(), "e2e", name);
    (store, layout)
}

fn head(epoch: u64, owner: &str) -> Head {
    Head {
        epoch: Epoch(epoch),
        owner: owner.into(),
        checkpoint: None,
        rollout: 0,
    }
}

#[tokio::test]
async fn on_azure_head_is_written_only_on_the_version_read() {
    let env = TestEnv::from_env();
    let name = unique_name("azure-head");
    let (store, layout) = open(&env, Store::Azure, &name);
    store
        .check_conditional_writes(&layout.probe("e2e"))
        .await
        .expect("Azurite honours If-Match and If-None-Match");
    let task = layout.task(0);
    assert!(store.read_head(&task).await.expect("read").is_none());

    let first = store
        .write_head(&task, &head(1, "a"), None)
        .await
        .expect("create HEAD");
    assert!(
        matches!(&first, HeadVersion::Object { e_tag: Some(_), .. }),
        "Azure versions HEAD by its ETag: {first:?}"
    );
    // A second owner creating HEAD again is refused.
    assert!(matches!(
        store.write_head(&task, &head(1, "b"), None).await,
        Err(StoreError::Conflict { .. })
    ));
    // The owner moves it on the version it holds; the version it held before is stale.
    let second = store
        .write_head(&task, &head(2, "a"), Some(&first))
        .await
        .expect("update on the current version");
    assert!(matches!(
        store
            .write_head(&task, &head(3, "zombie"), Some(&first))
            .await,
        Err(StoreError::Conflict { .. })
    ));
    let (read, version) = store.read_head(&task).await.expect("read").expect("HEAD");
    assert_eq!((read.epoch, read.owner.as_str()), (Epoch(2), "a"));
    assert_eq!(
        version, second,
        "the version read is the one the last write returned"
    );
}

#[tokio::test]
async fn on_the_gcs_emulator_nothing_can_be_written_or_fenced_and_the_probe_says_so() {
    let env = TestEnv::from_env();
    let name = unique_name("gcs-objects");
    let (store, layout) = open(&env, Store::Gcs, &name);
    let task = layout.task(0);
    let report = TaskReport {
        task: 0,
        owner: "gcs-test".into(),
        epoch: Some(Epoch(1)),
        state: ReportedState::Running,
        message: String::new(),
        at_ms: 1,
        decisions: Vec::new(),
        restored: None,
        failing_since_ms: None,
    };
    // All the emulator serves object_store's GCS client: the answer for an object that is not
    // there (its GET of one that is lacks `Last-Modified`, which the client refuses too).
    assert!(store.read_head(&task).await.expect("read").is_none());

    // What it does not: it answers a write with neither an ETag nor a generation, which
    // object_store's client refuses, so nothing is written and the probe says so.
    let written = store.write_report(&task, &report).await;
    assert!(
        written
            .as_ref()
            .is_err_and(|e| e.to_string().contains("ETag")),
        "{written:?}"
    );
    let refused = store
        .check_conditional_writes(&layout.probe("e2e"))
        .await
        .expect_err("the emulator cannot be written");
    let message = refused.to_string();
    assert!(
        matches!(refused, StoreError::ProbeFailed { .. })
            && message.contains("cannot be written")
            && message.contains("ETag Header missing"),
        "{message}"
    );
}

#[test]
fn a_worker_refuses_a_gcs_store_without_generation_preconditions_and_says_why() {
    let env = TestEnv::from_env();
    let prefix = "gcs-refused";
    let dir = scratch_dir(prefix);
    let name = unique_name(prefix);
    let (input, output) = (format!("{name}.in"), format!("{name}.out"));
    create_topic(&env, &input, 1);
    let job = write_materialize_job_on(
        &env,
        Store::Gcs,
        &dir,
        &name,
        &input,
        &output,
        "1s",
        "at-least-once",
    );
    let mut workers = Workers::new(env!("CARGO_BIN_EXE_sluice-worker").as_ref(), &job, &dir, 1);
    workers.start(0);
    let status = workers.wait_for_exit(0, Duration::from_secs(60));
    let log = workers.log(0);
    assert!(
        !status.success(),
        "the worker must refuse to run; log:\n{log}"
    );
    assert!(
        log.contains("checkpoint storage cannot be written")
            && log.contains("ETag Header missing")
            && log.contains(&format!("e2e/{name}/probes/")),
        "the refusal names the store and what it lacks; log:\n{log}"
    );
}
