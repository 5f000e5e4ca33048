//! The operator's command line, built inside this crate so its tests can start a real operator
//! process (`CARGO_BIN_EXE_sluice-operator`). Same code as `operator/src/main.rs`.

fn main() -> anyhow::Result<()> {
    sluice_operator::cli::main()
}
