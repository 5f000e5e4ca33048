//! The `sluice-worker` command line: `run` is the pod mode, `local` runs a whole job in one
//! process. Reads its environment and arguments, then hands over to [`crate::worker::run`].

use std::net::SocketAddr;
use std::path::PathBuf;

use crate::job::Job;
use crate::worker::{self, Backend, WorkerConfig};
use anyhow::Context;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(version, about = "Runs the partition tasks of a Sluice StreamJob")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Pod mode: run the tasks this worker owns (`p mod parallelism == ordinal`).
    Run {
        /// The rendered job (a StreamJob manifest), as mounted from the operator's ConfigMap.
        #[arg(long, env = "SLUICE_JOB", default_value = "/etc/sluice/job.yaml")]
        job: PathBuf,
        /// This worker's ordinal; defaults to the number ending the pod's hostname (`name-3`).
        #[arg(long, env = "SLUICE_ORDINAL")]
        ordinal: Option<u32>,
        /// Number of workers; defaults to the job's `spec.parallelism`.
        #[arg(long, env = "SLUICE_PARALLELISM")]
        parallelism: Option<u32>,
        /// The rollout of the job this pod runs, set by the operator (it only grows). A worker
        /// never takes a task from an owner of a newer rollout.
        #[arg(long, env = "SLUICE_ROLLOUT", default_value_t = 0)]
        rollout: u64,
        /// Directory on the persistent volume for task state.
        #[arg(long, env = "SLUICE_STATE_DIR", default_value = "/var/lib/sluice")]
        state_dir: PathBuf,
        /// Address of /metrics, /healthz and /readyz.
        #[arg(long, env = "SLUICE_HTTP_ADDR", default_value = "0.0.0.0:8080")]
        http_addr: SocketAddr,
        /// State backend.
        #[arg(long, env = "SLUICE_STATE_BACKEND", value_enum, default_value_t = Backend::Rocksdb)]
        backend: Backend,
    },
    /// Embedded mode: run every task of a job in this process, for a laptop.
    Local {
        /// The StreamJob manifest.
        #[arg(short = 'f', long)]
        file: PathBuf,
        /// Directory for task state.
        #[arg(long, default_value = ".sluice")]
        state_dir: PathBuf,
        /// Checkpoint storage URI; defaults to `file://<state-dir>/checkpoints`.
        #[arg(long)]
        checkpoint_storage: Option<String>,
        /// Override the job's source (and default sink) bootstrap servers.
        #[arg(long, env = "SLUICE_KAFKA_BOOTSTRAP")]
        bootstrap_servers: Option<String>,
        /// Address of /metrics, /healthz and /readyz.
        #[arg(long, default_value = "127.0.0.1:8080")]
        http_addr: SocketAddr,
        /// State backend.
        #[arg(long, value_enum, default_value_t = Backend::Rocksdb)]
        backend: Backend,
    },
}

pub use sluice_core::logging::init_logging;

/// Runs the command line; the binaries' `main` is only this.
pub fn main() -> anyhow::Result<()> {
    init_logging("info,rdkafka=warn");
    let config = match Cli::parse().command {
        Command::Run {
            job,
            ordinal,
            parallelism,
            rollout,
            state_dir,
            http_addr,
            backend,
        } => {
            let job = Job::from_file(&job)?;
            let hostname = std::env::var("HOSTNAME").unwrap_or_default();
            let ordinal = match ordinal {
                Some(o) => o,
                None => hostname
                    .rsplit('-')
                    .next()
                    .and_then(|n| n.parse().ok())
                    .with_context(|| format!("no SLUICE_ORDINAL and the hostname {hostname:?} does not end in -<ordinal>"))?,
            };
            let parallelism =
                parallelism.unwrap_or(u32::try_from(job.spec.parallelism).unwrap_or(1));
            anyhow::ensure!(
                ordinal < parallelism,
                "ordinal {ordinal} is not below parallelism {parallelism}"
            );
            let owner = if hostname.is_empty() {
                format!("worker-{ordinal}")
            } else {
                hostname
            };
            WorkerConfig {
                checkpoint_storage: job.spec.checkpoint.storage.clone(),
                job,
                ordinal,
                parallelism,
                state_dir,
                owner,
                rollout,
                http_addr,
                backend,
            }
        }
        Command::Local {
            file,
            state_dir,
            checkpoint_storage,
            bootstrap_servers,
            http_addr,
            backend,
        } => {
            let mut job = Job::from_file(&file)?;
            if let Some(servers) = bootstrap_servers {
                job.spec.source.kafka.bootstrap_servers = servers;
            }
            std::fs::create_dir_all(&state_dir)?;
            let state_dir = state_dir.canonicalize()?;
            let checkpoint_storage = checkpoint_storage
                .unwrap_or_else(|| format!("file://{}", state_dir.join("checkpoints").display()));
            WorkerConfig {
                job,
                ordinal: 0,
                parallelism: 1,
                state_dir,
                owner: "local".into(),
                rollout: 0,
                http_addr,
                checkpoint_storage,
                backend,
            }
        }
    };
    worker::run(config)?;
    Ok(())
}
