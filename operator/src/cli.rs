//! The `sluice-operator` command line: runs the controller, or prints the CRD or the RBAC it
//! needs. Reads arguments and environment, then hands over to [`crate::reconcile::run`].

use std::sync::Arc;

use crate::build::Settings;
use crate::leader::Candidate;
use crate::metrics::Metrics;
use crate::observe::RealOutside;
use crate::reconcile::{self, Context};
use anyhow::Context as _;
use clap::{Parser, Subcommand};
use kube::runtime::events::Reporter;
use tracing::{error, info};

#[derive(Parser)]
#[command(version, about = "Runs StreamJobs on Kubernetes")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the controller (in a cluster, or against the current kubeconfig).
    Run {
        /// Namespaces to watch, comma-separated; empty watches all.
        #[arg(
            long,
            env = "SLUICE_WATCH_NAMESPACES",
            value_delimiter = ',',
            default_value = ""
        )]
        watch_namespaces: Vec<String>,
        /// Elect a leader on a Lease, so several replicas can run.
        #[arg(long, env = "SLUICE_LEADER_ELECTION", default_value_t = true, action = clap::ArgAction::Set)]
        leader_election: bool,
        /// Name of the leader-election Lease.
        #[arg(long, env = "SLUICE_LEASE_NAME", default_value = "sluice-operator")]
        lease_name: String,
        /// Namespace of the Lease (the operator's own).
        #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
        namespace: String,
        /// This replica's identity in the Lease.
        #[arg(long, env = "POD_NAME")]
        identity: Option<String>,
        /// Worker image for jobs without spec.image.
        #[arg(long, env = "SLUICE_WORKER_IMAGE", default_value = concat!("ghcr.io/sluice-dev/sluice-worker:", env!("CARGO_PKG_VERSION")))]
        worker_image: String,
        /// Address of /metrics, /healthz and /readyz.
        #[arg(long, env = "SLUICE_HTTP_ADDR", default_value = "0.0.0.0:8080")]
        http_addr: std::net::SocketAddr,
    },
    /// Print the StreamJob CustomResourceDefinition as YAML (`sluice-operator crd | kubectl apply -f -`).
    Crd,
    /// Print every permission the operator needs, as RBAC rules.
    Rbac,
}

/// Runs the command line.
pub fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Crd => print!("{}", sluice_crds::crd_yaml()),
        Command::Rbac => print!("{}", crate::rbac::yaml()),
        Command::Run {
            watch_namespaces,
            leader_election,
            lease_name,
            namespace,
            identity,
            worker_image,
            http_addr,
        } => {
            sluice_core::logging::init_logging("info");
            let namespaces: Vec<String> = watch_namespaces
                .into_iter()
                .map(|n| n.trim().to_string())
                .filter(|n| !n.is_empty())
                .collect();
            let identity = identity.unwrap_or_else(|| {
                std::env::var("HOSTNAME").unwrap_or_else(|_| "sluice-operator".into())
            });
            // Other dependencies enable a second rustls backend, so rustls cannot pick one by
            // itself; kube's TLS uses ring.
            let _ = rustls::crypto::ring::default_provider().install_default();
            return tokio::runtime::Runtime::new()?.block_on(async move {
                let client = kube::Client::try_default()
                    .await
                    .context("connecting to the Kubernetes API")?;
                let metrics = Arc::new(Metrics::default());
                let listener = tokio::net::TcpListener::bind(http_addr)
                    .await
                    .with_context(|| format!("listening on {http_addr}"))?;
                info!(addr = %listener.local_addr()?, "serving /metrics, /healthz and /readyz");
                tokio::spawn(crate::http::serve(listener, metrics.clone()));
                let ctx = Arc::new(Context {
                    client: client.clone(),
                    settings: Settings { worker_image },
                    outside: Arc::new(RealOutside::default()),
                    reporter: Reporter {
                        controller: "sluice-operator".into(),
                        instance: Some(identity.clone()),
                    },
                    metrics,
                    announcements: Default::default(),
                });
                info!(namespaces = ?namespaces, leader_election, "operator starting");
                if leader_election {
                    let candidate = Candidate::new(client, &namespace, &lease_name, &identity);
                    candidate.acquire().await.context("acquiring the leader lease")?;
                    tokio::select! {
                        () = reconcile::run(ctx, namespaces) => {}
                        lost = candidate.hold() => {
                            error!(reason = %lost, "lost the leader lease; exiting so a new leader takes over");
                            anyhow::bail!("lost the leader lease: {lost}");
                        }
                    }
                } else {
                    reconcile::run(ctx, namespaces).await;
                }
                info!("operator stopped");
                Ok(())
            });
        }
    }
    Ok(())
}
