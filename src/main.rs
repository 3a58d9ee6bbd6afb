use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use tracing_subscriber::EnvFilter;

use berth::metrics::Metrics;
use berth::policy::{Policy, Snapshot};
use berth::registry::RegistryState;
use berth::storage::{StorageLocation, Store};

/// berth: a container registry configured by Kubernetes custom resources.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    /// Log format: human-readable text or one JSON object per line.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "BERTH_LOG_FORMAT")]
    log_format: LogFormat,

    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the registry standalone, without a Kubernetes cluster.
    Serve(ServeArgs),
    /// Print the CustomResourceDefinitions of berth's resources as YAML (for `kubectl apply -f -`).
    Crds(CrdsArgs),
}

#[derive(clap::Args)]
struct CrdsArgs {
    /// Write one file per CRD into this directory instead of printing them.
    #[arg(long)]
    out_dir: Option<PathBuf>,
}

fn crds(args: CrdsArgs) -> anyhow::Result<()> {
    let crds = berth::api::crds();
    match args.out_dir {
        None => {
            for crd in &crds {
                print!("---\n{}", berth::api::crd_yaml(crd));
            }
        }
        Some(dir) => {
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            for crd in &crds {
                let path = dir.join(berth::api::crd_file_name(crd));
                std::fs::write(&path, berth::api::crd_yaml(crd))
                    .with_context(|| format!("writing {}", path.display()))?;
            }
        }
    }
    Ok(())
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Address and port to listen on.
    #[arg(long, default_value = "127.0.0.1:5000", env = "BERTH_LISTEN")]
    listen: SocketAddr,

    /// Directory for registry content when no --storage is given.
    #[arg(long, default_value = "./berth-data", env = "BERTH_DATA_DIR")]
    data_dir: PathBuf,

    /// Where to keep registry content: a directory path, or s3://bucket[/prefix] configured
    /// by the usual AWS_* variables (AWS_ENDPOINT and AWS_ALLOW_HTTP=true for MinIO).
    /// Overrides --data-dir.
    #[arg(long, env = "BERTH_STORAGE")]
    storage: Option<String>,
}

fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let location = match &args.storage {
        Some(s) => StorageLocation::parse(s)?,
        None => StorageLocation::Local(args.data_dir.clone()),
    };
    let store = Store::open(&location).with_context(|| format!("opening storage {location}"))?;
    let state = RegistryState {
        store,
        metrics: Metrics::new(),
        policy: Policy::new(Snapshot::open()),
    };
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, storage = %location, "berth registry listening");
    println!("berth listening on http://{addr} (storage: {location})");
    berth::server::serve(listener, berth::server::app(state)).await?;
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match cli.command {
        Command::Serve(args) => serve(args).await,
        Command::Crds(args) => crds(args),
    }
}
