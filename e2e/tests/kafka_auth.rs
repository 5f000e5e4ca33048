//! Jobs on Kafka clusters that need credentials, through the fake API server with the real
//! operator and real workers, credentials from Secrets:
//!
//! - a TLS cluster (`e2e/env/up.sh`'s second broker, behind a TLS-terminating proxy): the
//!   workers trust its CA from a Secret, and the operator's metadata and lag clients use the
//!   same Secret, so the partitions, each task's lag and the checkpoints show in status; a CA
//!   that does not sign the brokers' certificate is reported, naming the Secret and key;
//! - a SASL cluster: jobs authenticating with SCRAM-SHA-512 and with PLAIN, their user and
//!   password from a Secret, run, and the operator's clients authenticate the same way, so
//!   status shows partitions, lag and checkpoints. Tansu 0.6 accepts no SASL credentials at all
//!   from this build (its storage engines keep no SCRAM credentials, and PLAIN is not compiled
//!   in), so this cluster is `e2e/env/sasl_proxy.py`, a SASL server in front of a plain Tansu;
//! - refused SASL credentials, from that proxy and from Tansu's own `--authentication`, are
//!   reported the same way, promptly, not as a hang, naming the Secret and keys and never the
//!   password.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sluice_e2e::cluster::{create_topic, expect_output, produce_json, scratch_dir};
use sluice_e2e::operator::{Cluster, NAMESPACE, apply, checkpoint, job, streamjob, tail};
use sluice_e2e::{TestEnv, unique_name};

const RECORDS: usize = 200;

/// The fake API server, the real operator and the workers' simulator, in `dir`.
async fn start(dir: &std::path::Path) -> Cluster {
    Cluster::start(
        dir,
        env!("CARGO_BIN_EXE_sluice-worker").as_ref(),
        env!("CARGO_BIN_EXE_sluice-operator").as_ref(),
    )
    .await
}

fn secret(cluster: &Cluster, name: &str, data: Value) {
    cluster.store.write(
        "",
        "secrets",
        NAMESPACE,
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "stringData": data}),
        false,
    );
}

/// Waits (up to `within`) until `done` holds for the job's status; panics with it otherwise.
fn wait_for_status(
    cluster: &Cluster,
    name: &str,
    within: Duration,
    what: &str,
    mut done: impl FnMut(&Value) -> bool,
) -> Value {
    let started = Instant::now();
    loop {
        let status = job(&cluster.store, name).expect("job")["status"].clone();
        if done(&status) {
            eprintln!(
                "{name}: {what} after {:.1} s",
                started.elapsed().as_secs_f64()
            );
            return status;
        }
        assert!(
            started.elapsed() < within,
            "{name}: not {what} within {within:?}: {status}\n{}",
            tail(&cluster.operator.log)
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// The condition of `type_` in `status`.
fn condition<'a>(status: &'a Value, type_: &str) -> Option<&'a Value> {
    status["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
}

/// Writes [`RECORDS`] records to `input` and waits until the job outputs them all to `output`
/// (2 partitions) and its status shows the source partitions it validated, the lag of each
/// task at 0 and a checkpoint: all of which the operator had to ask the brokers for, with the
/// job's credentials.
fn runs_and_is_observed(cluster: &Cluster, env: &TestEnv, name: &str, input: &str, output: &str) {
    let values: Vec<Value> = (0..RECORDS).map(|i| json!({"id": i, "n": i * 2})).collect();
    produce_json(env, input, values.clone());
    let want = values
        .iter()
        .map(|v| (String::new(), v.to_string()))
        .collect();
    expect_output(env, output, 2, &want, || {});
    eprintln!("{name}: {RECORDS} records through {}", env.kafka_bootstrap);
    let status = wait_for_status(
        cluster,
        name,
        Duration::from_secs(120),
        "caught up in status",
        |s| {
            s["lag"] == 0
                && s["lastCheckpoint"]["id"].is_u64()
                && s["tasks"]
                    .as_array()
                    .is_some_and(|t| t.len() == 2 && t.iter().all(|t| t["lag"] == 0))
        },
    );
    assert_eq!(
        condition(&status, "SpecValid").map(|c| c["status"].clone()),
        Some("True".into()),
        "{status}"
    );
}

/// The message of the job's `SpecValid` condition once it says `KafkaAuthenticationFailed`.
fn refused(cluster: &Cluster, name: &str) -> String {
    let applied = Instant::now();
    let status = wait_for_status(cluster, name, Duration::from_secs(60), "refused", |s| {
        condition(s, "SpecValid").is_some_and(|c| c["reason"] == "KafkaAuthenticationFailed")
    });
    assert_eq!(
        condition(&status, "Ready").map(|c| c["status"].clone()),
        Some("False".into())
    );
    let message = condition(&status, "SpecValid").expect("SpecValid")["message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    eprintln!(
        "{name}: refused {:.1} s after it was looked for: {message}",
        applied.elapsed().as_secs_f64()
    );
    message
}

/// Asserts that `password` is in neither the job's status nor the operator's log.
fn password_is_nowhere(cluster: &Cluster, name: &str, password: &str) {
    let status = job(&cluster.store, name).expect("job")["status"].to_string();
    assert!(
        !status.contains(password),
        "the password is in status: {status}"
    );
    let log = std::fs::read_to_string(&cluster.operator.log).expect("the operator's log");
    assert!(
        !log.contains(password),
        "the password is in the operator's log"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_on_a_tls_cluster_runs_and_the_operator_sees_its_partitions_lag_and_checkpoints() {
    let plain = TestEnv::from_env();
    let env = plain.on_tls_broker();
    let dir = scratch_dir("tls");
    let name = unique_name("tls");
    let (input, output) = (format!("{name}.in"), format!("{name}.out"));
    create_topic(&env, &input, 2);
    create_topic(&env, &output, 2);
    let cluster = start(&dir).await;
    let ca = std::fs::read_to_string(&env.tls_ca_file).expect("the TLS broker's CA");
    secret(&cluster, "kafka-tls", json!({"ca.crt": ca}));
    let spec = |storage: &str, ca_secret: &str| {
        json!({
            "parallelism": 1,
            "source": {"kafka": {
                "bootstrapServers": env.kafka_bootstrap, "topics": [input], "format": "json",
                "auth": {"tls": {"ca": {"name": ca_secret, "key": "ca.crt"}}},
            }},
            "steps": [{"name": "all", "filter": {"expr": "true"}}],
            "sink": {"kafka": {"topic": output}},
            "checkpoint": checkpoint(&plain, storage),
            "state": {"size": "1Gi"},
        })
    };
    apply(
        &cluster.kubeconfig,
        &dir,
        &streamjob(
            &name,
            spec(&format!("s3://{}/{name}", plain.s3_bucket), "kafka-tls"),
        ),
    );
    runs_and_is_observed(&cluster, &env, &name, &input, &output);

    // A CA that did not sign the brokers' certificate: reported, naming the Secret and key.
    let other = std::fs::read_to_string("/etc/ssl/certs/ca-certificates.crt")
        .ok()
        .and_then(|bundle| {
            let end = "-----END CERTIFICATE-----";
            bundle
                .find(end)
                .map(|i| bundle[..i + end.len()].to_string())
        })
        .unwrap_or_else(|| {
            // No system bundle: any self-signed certificate will do; the broker's own
            // certificate is not a CA, so it signs nothing.
            std::fs::read_to_string(env.tls_ca_file.replace("ca.crt", "broker.crt"))
                .expect("the broker's certificate")
        });
    secret(&cluster, "kafka-wrong-ca", json!({"ca.crt": other}));
    let wrong = format!("{name}-wrong-ca");
    apply(
        &cluster.kubeconfig,
        &dir,
        &streamjob(
            &wrong,
            spec(
                &format!("s3://{}/{wrong}", plain.s3_bucket),
                "kafka-wrong-ca",
            ),
        ),
    );
    let message = refused(&cluster, &wrong);
    for says in [
        "spec.source.kafka.auth.tls.ca (Secret kafka-wrong-ca, key ca.crt)",
        "certificate verify failed",
    ] {
        assert!(message.contains(says), "{message}");
    }
}

/// A job's spec on `env`'s brokers, its SASL user and password from the Secret `secret`.
fn sasl_spec(env: &TestEnv, plain: &TestEnv, name: &str, mechanism: &str, secret: &str) -> Value {
    json!({
        "parallelism": 1,
        "source": {"kafka": {
            "bootstrapServers": env.kafka_bootstrap, "topics": [format!("{name}.in")],
            "format": "json",
            "auth": {"sasl": {
                "mechanism": mechanism,
                "username": {"name": secret, "key": "username"},
                "password": {"name": secret, "key": "password"},
            }},
        }},
        "steps": [{"name": "all", "filter": {"expr": "true"}}],
        "sink": {"kafka": {"topic": format!("{name}.out")}},
        "checkpoint": checkpoint(plain, &format!("s3://{}/{name}", plain.s3_bucket)),
        "state": {"size": "1Gi"},
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_on_a_sasl_cluster_run_and_the_operator_sees_them_with_the_same_secret() {
    let plain = TestEnv::from_env();
    let dir = scratch_dir("sasl-runs");
    let cluster = start(&dir).await;
    secret(
        &cluster,
        "kafka-user",
        json!({"username": plain.sasl_user, "password": plain.sasl_password}),
    );
    let mut jobs = Vec::new();
    for mechanism in ["SCRAM-SHA-512", "PLAIN"] {
        let env = plain.on_sasl_broker(mechanism);
        let name = unique_name(&format!("sasl-{}", mechanism.to_lowercase()));
        let (input, output) = (format!("{name}.in"), format!("{name}.out"));
        create_topic(&env, &input, 2);
        create_topic(&env, &output, 2);
        apply(
            &cluster.kubeconfig,
            &dir,
            &streamjob(
                &name,
                sasl_spec(&env, &plain, &name, mechanism, "kafka-user"),
            ),
        );
        jobs.push((env, name, input, output));
    }
    for (env, name, input, output) in &jobs {
        runs_and_is_observed(&cluster, env, name, input, output);
        password_is_nowhere(&cluster, name, &plain.sasl_password);
    }

    // The same cluster refusing a wrong password: reported, naming the Secret and keys.
    let wrong_password = "not-the-orders-app-password";
    secret(
        &cluster,
        "kafka-wrong-user",
        json!({"username": plain.sasl_user, "password": wrong_password}),
    );
    let env = plain.on_sasl_broker("SCRAM-SHA-256");
    let name = unique_name("sasl-wrong");
    apply(
        &cluster.kubeconfig,
        &dir,
        &streamjob(
            &name,
            sasl_spec(&env, &plain, &name, "SCRAM-SHA-256", "kafka-wrong-user"),
        ),
    );
    let message = refused(&cluster, &name);
    for says in [
        "spec.source.kafka.auth.sasl.password (Secret kafka-wrong-user, key password)",
        "SASL",
    ] {
        assert!(message.contains(says), "{message}");
    }
    password_is_nowhere(&cluster, &name, wrong_password);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_sasl_credentials_are_reported_with_the_secret_and_keys_not_a_hang() {
    let plain = TestEnv::from_env();
    let dir = scratch_dir("sasl");
    let name = unique_name("sasl");
    let cluster = start(&dir).await;
    secret(
        &cluster,
        "kafka-user",
        json!({"username": "orders-app", "password": "not-the-password"}),
    );
    // Tansu's own `--authentication`, which refuses every credential.
    let tansu = TestEnv {
        kafka_bootstrap: plain.sasl_bootstrap.clone(),
        ..plain.clone()
    };
    let spec = sasl_spec(&tansu, &plain, &name, "SCRAM-SHA-512", "kafka-user");
    apply(&cluster.kubeconfig, &dir, &streamjob(&name, spec));
    let message = refused(&cluster, &name);
    let broker = format!("the brokers at {}", plain.sasl_bootstrap);
    for says in [
        broker.as_str(),
        "spec.source.kafka.auth.sasl.username (Secret kafka-user, key username)",
        "spec.source.kafka.auth.sasl.password (Secret kafka-user, key password)",
        "SASL",
    ] {
        assert!(message.contains(says), "{message}");
    }
    password_is_nowhere(&cluster, &name, "not-the-password");
}
