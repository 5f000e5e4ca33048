//! `sluice-worker`: see [`sluice_worker::cli`].

fn main() -> anyhow::Result<()> {
    sluice_worker::cli::main()
}
