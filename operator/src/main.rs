//! `sluice-operator`: see [`sluice_operator::cli`].

fn main() -> anyhow::Result<()> {
    sluice_operator::cli::main()
}
