use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use tracing_subscriber::EnvFilter;

use berth::config::{ConfigFolder, watch_folder};
use berth::controller::trigger::{self, RegistryHosts, TriggerMetrics};
use berth::controller::{self, ControllerMetrics};
use berth::metrics::Metrics;
use berth::policy::{Policy, Snapshot};
use berth::registry::RegistryState;
use berth::registry::events::PushEvents;
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
    /// Run the registry and the reconcilers of berth's custom resources, in a cluster.
    Operator(OperatorArgs),
    /// Print the CustomResourceDefinitions of berth's resources as YAML (for `kubectl apply -f -`).
    Crds(CrdsArgs),
}

#[derive(clap::Args)]
struct RegistryArgs {
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

    /// A host name (`host[:port]`) under which workloads name this registry in their images,
    /// e.g. `registry.example.com` or `berth.berth-system.svc:5000` (repeatable, or
    /// comma-separated). A Trigger without a container name updates the containers whose
    /// image is its repository on one of these; the first is written into images that name
    /// none. Default: the listen address, and localhost:PORT on loopback or 0.0.0.0.
    #[arg(
        long = "registry-host",
        env = "BERTH_REGISTRY_HOSTS",
        value_delimiter = ','
    )]
    registry_hosts: Vec<String>,
}

#[derive(clap::Args)]
struct ServeArgs {
    #[command(flatten)]
    registry: RegistryArgs,

    /// A folder of berth resources as YAML (Namespace, Repository, …, as in examples/),
    /// applied at start and whenever a file changes. Without it every namespace accepts pushes.
    #[arg(long, env = "BERTH_CONFIG_DIR")]
    config_dir: Option<PathBuf>,

    /// A kubeconfig file: the folder's Triggers update that cluster's workloads. Without
    /// it, Triggers only warn that they have no cluster.
    #[arg(long, env = "BERTH_KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
}

#[derive(clap::Args)]
struct OperatorArgs {
    #[command(flatten)]
    registry: RegistryArgs,

    /// Kubernetes namespace of the leader-election Lease and default namespace of Secrets.
    #[arg(long, env = "POD_NAMESPACE", default_value = "berth-system")]
    namespace: String,

    /// This replica's identity in the Lease (the Pod name in a cluster).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,

    /// Name of the leader-election Lease.
    #[arg(long, default_value = "berth-operator")]
    lease_name: String,

    /// Manage only berth resources whose labels match this selector (e.g. `berth.dev/shard=a`),
    /// so several berth installations can share one cluster.
    #[arg(long, env = "BERTH_SELECTOR")]
    selector: Option<String>,
}

#[derive(clap::Args)]
struct CrdsArgs {
    /// Write one file per CRD into this directory instead of printing them.
    #[arg(long)]
    out_dir: Option<PathBuf>,
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

/// Binds the registry's port; returns the listener and the host names workloads use
/// for this registry (`--registry-host`, or from the bound address).
async fn bind(args: &RegistryArgs) -> anyhow::Result<(tokio::net::TcpListener, RegistryHosts)> {
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    let hosts = match args.registry_hosts.is_empty() {
        true => RegistryHosts::for_listen_address(listener.local_addr()?),
        false => RegistryHosts::new(args.registry_hosts.iter().cloned()),
    };
    Ok((listener, hosts))
}

/// Serves the registry with `policy` on the bound `listener`.
async fn serve_registry(
    args: &RegistryArgs,
    listener: tokio::net::TcpListener,
    store: Store,
    metrics: Arc<Metrics>,
    policy: Policy,
    events: PushEvents,
) -> anyhow::Result<()> {
    let state = RegistryState {
        store,
        metrics,
        policy,
        events,
    };
    let addr = listener.local_addr()?;
    tracing::info!(%addr, "berth registry listening");
    println!(
        "berth listening on http://{addr} (storage: {})",
        location(args)?
    );
    berth::server::serve(listener, berth::server::app(state)).await?;
    Ok(())
}

fn location(args: &RegistryArgs) -> anyhow::Result<StorageLocation> {
    Ok(match &args.storage {
        Some(s) => StorageLocation::parse(s)?,
        None => StorageLocation::Local(args.data_dir.clone()),
    })
}

fn open_store(args: &RegistryArgs) -> anyhow::Result<Store> {
    let location = location(args)?;
    Store::open(&location).with_context(|| format!("opening storage {location}"))
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let store = open_store(&args.registry)?;
    let events = PushEvents::default();
    let mut metrics = Metrics::new_unshared();
    let trigger_metrics = TriggerMetrics::register(&mut metrics.registry);
    let (listener, hosts) = bind(&args.registry).await?;
    let policy = match &args.config_dir {
        None => Policy::new(Snapshot::open()),
        Some(dir) => {
            anyhow::ensure!(
                dir.is_dir(),
                "--config-dir {} is not a directory",
                dir.display()
            );
            let policy = Policy::pending();
            tokio::spawn(watch_folder(ConfigFolder::new(dir), policy.clone()));
            policy
        }
    };
    trigger::standalone::start(
        args.config_dir.as_deref(),
        args.kubeconfig.as_deref(),
        trigger::standalone::Parts {
            store: store.clone(),
            policy: policy.clone(),
            hosts,
            metrics: trigger_metrics,
            pushes: events.clone(),
        },
    )
    .await?;
    serve_registry(
        &args.registry,
        listener,
        store,
        Arc::new(metrics),
        policy,
        events,
    )
    .await
}

async fn operator(args: OperatorArgs) -> anyhow::Result<()> {
    let client = kube::Client::try_default()
        .await
        .context("connecting to Kubernetes (in-cluster, or KUBECONFIG)")?;
    let store = open_store(&args.registry)?;
    let policy = Policy::pending();
    let events = PushEvents::default();
    let mut metrics = Metrics::new_unshared();
    let controller_metrics = ControllerMetrics::register(&mut metrics.registry);
    let trigger_metrics = TriggerMetrics::register(&mut metrics.registry);
    let metrics = Arc::new(metrics);
    let (listener, hosts) = bind(&args.registry).await?;
    let identity = args
        .identity
        .clone()
        .unwrap_or_else(|| format!("berth-{}", uuid::Uuid::new_v4()));
    let ctx = Arc::new(
        controller::Context::new(
            client.clone(),
            store.clone(),
            policy.clone(),
            controller_metrics,
            args.namespace.clone(),
            args.selector.clone(),
            events.clone(),
        )
        .with_triggers(hosts, trigger_metrics),
    );
    let election = controller::leader::LeaderElection::new(
        client,
        &args.namespace,
        &args.lease_name,
        &identity,
    );
    tokio::spawn(controller::run_operator(ctx, election));
    serve_registry(&args.registry, listener, store, metrics, policy, events).await
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

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    // Two TLS backends are linked in (kube uses ring, the S3 client aws-lc-rs); name one.
    let _ = rustls::crypto::ring::default_provider().install_default();
    match cli.command {
        Command::Serve(args) => serve(args).await,
        Command::Operator(args) => operator(args).await,
        Command::Crds(args) => crds(args),
    }
}
