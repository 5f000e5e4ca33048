//! `sluice-operator`: the control plane. Today it prints the CRD; the reconciler comes next.

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(version, about = "Runs StreamJobs on Kubernetes")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the StreamJob CustomResourceDefinition as YAML (`sluice-operator crd | kubectl apply -f -`).
    Crd,
}

fn main() {
    match Cli::parse().command {
        Command::Crd => print!("{}", sluice_crds::crd_yaml()),
    }
}
