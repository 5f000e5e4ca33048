//! The worker's command line, built inside this crate so its tests can start real worker
//! processes (`CARGO_BIN_EXE_sluice-worker`). Same code as `worker/src/main.rs`.

fn main() -> anyhow::Result<()> {
    sluice_worker::cli::main()
}
