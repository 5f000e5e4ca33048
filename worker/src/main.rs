//! `sluice-worker`: the processing pod and the local (embedded) runner. Not built yet.

fn main() -> std::process::ExitCode {
    eprintln!("sluice-worker: the worker core is not built yet; see the project's issue list");
    std::process::ExitCode::from(2)
}
