//! A StreamJob whose expressions do not compile, or read names a record does not have, is refused
//! by the real `sluice-worker` binary before it touches Kafka or storage: the error names the
//! step, the expression and the line and column.

use std::process::Command;

use sluice_e2e::cluster::scratch_dir;

fn refusal(steps: &str) -> String {
    let dir = scratch_dir("invalid-expression");
    let manifest = dir.join("job.yaml");
    std::fs::write(
        &manifest,
        format!(
            r#"apiVersion: sluice.dev/v1alpha1
kind: StreamJob
metadata: {{name: bad, namespace: e2e}}
spec:
  parallelism: 1
  source: {{kafka: {{bootstrapServers: "127.0.0.1:1", topics: [orders]}}}}
  steps: {steps}
  sink: {{kafka: {{topic: out}}}}
  checkpoint: {{storage: "file://{}/checkpoints"}}
"#,
            dir.display()
        ),
    )
    .expect("write job");
    let out = Command::new(env!("CARGO_BIN_EXE_sluice-worker"))
        .args(["local", "-f"])
        .arg(&manifest)
        .args([
            "--bootstrap-servers",
            "127.0.0.1:1",
            "--http-addr",
            "127.0.0.1:0",
        ])
        .arg("--state-dir")
        .arg(dir.join("state"))
        .output()
        .expect("run sluice-worker");
    assert!(!out.status.success(), "the job was accepted");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_syntax_error_is_refused_naming_step_expression_and_position() {
    let err = refusal(
        r#"[{name: ok, filter: {expr: "value.a > 1"}}, {name: reshape, map: {value: "{'id': value.id"}}]"#,
    );
    assert!(err.contains(r#"step "reshape""#), "{err}");
    assert!(err.contains(r#""{'id': value.id""#), "{err}");
    assert!(err.contains("map.value"), "{err}");
    assert!(err.contains("line 1, column"), "{err}");
}

#[test]
fn a_name_that_is_no_record_variable_is_refused_at_its_position() {
    let err = refusal(r#"[{name: big, filter: {expr: "value.amount > 100 &&\n  amount < 5"}}]"#);
    assert!(err.contains(r#"step "big""#), "{err}");
    assert!(err.contains("line 2, column 3"), "{err}");
    assert!(err.contains(r#"undeclared reference to "amount""#), "{err}");
}
