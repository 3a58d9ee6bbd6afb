use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use tracing_subscriber::EnvFilter;

use berth::auth::Auth;
use berth::auth::key::SigningKey;
use berth::auth::service_accounts::ServiceAccountReviewer;
use berth::auth::users::Users;
use berth::config::{ConfigFolder, watch_folder};
use berth::controller::trigger::{self, RegistryHosts, TriggerMetrics};
use berth::controller::{self, ControllerMetrics};
use berth::gc::Collector;
use berth::metrics::Metrics;
use berth::policy::{Policy, Snapshot};
use berth::registry::RegistryState;
use berth::registry::events::PushEvents;
use berth::replicas::ReplicaMetrics;
use berth::replicas::push_log::{PushLogSettings, PushLogTail};
use berth::schedule::Schedule;
use berth::storage::{BlobReads, GcOptions, RedirectSettings, StorageLocation, Store};
use berth::sync::{self, SyncMetrics};

/// jemalloc, not glibc's malloc: under bursts of concurrent requests glibc's per-thread
/// arenas kept the freed 1 MiB read and write buffers (anon RSS stayed at 250-300 MiB
/// after a 256-client pull); jemalloc returns them within seconds (12-60 MiB), at equal
/// throughput (benches/README.md).
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

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
#[allow(
    clippy::enum_variant_names,
    reason = "`login-command` is what users type"
)]
enum Command {
    /// Run the registry standalone, without a Kubernetes cluster.
    Serve(ServeArgs),
    /// Run the registry and the reconcilers of berth's custom resources, in a cluster.
    Operator(OperatorArgs),
    /// Print the CustomResourceDefinitions of berth's resources as YAML (for `kubectl apply -f -`).
    Crds(CrdsArgs),
    /// Print a `docker login` line with a credential for a user: long-lived (until the
    /// user's password changes) or temporary.
    LoginCommand(LoginCommandArgs),
    /// Hash a password (read from stdin) for a user Secret's `passwordHash`.
    HashPassword,
}

#[derive(clap::Args)]
struct LoginCommandArgs {
    /// The berth user the credential is for.
    #[arg(long)]
    user: String,

    /// A credential that expires (after --valid-for) instead of a long-lived one.
    #[arg(long)]
    temporary: bool,

    /// How long a temporary credential lasts, e.g. `6h`, `30m`.
    #[arg(long, default_value = "6h", value_parser = parse_duration)]
    valid_for: std::time::Duration,

    /// The registry address to put in the line, as clients reach it.
    #[arg(long, default_value = "127.0.0.1:5000")]
    registry: String,

    /// Standalone: the config folder holding the user (as for `berth serve`).
    #[arg(long, env = "BERTH_CONFIG_DIR", conflicts_with = "cluster")]
    config_dir: Option<PathBuf>,

    /// Standalone: the signing key file (default `<data-dir>/auth/signing-key`).
    #[arg(long, env = "BERTH_SIGNING_KEY_FILE")]
    signing_key_file: Option<PathBuf>,

    /// Standalone: berth's data directory, where the signing key is by default.
    #[arg(long, default_value = "./berth-data", env = "BERTH_DATA_DIR")]
    data_dir: PathBuf,

    /// Standalone: the storage `berth serve` was given (`--storage`), e.g.
    /// `s3://bucket/prefix`: on S3 the signing key is the one its replicas share in the
    /// bucket. Overrides --data-dir.
    #[arg(long, env = "BERTH_STORAGE", conflicts_with_all = ["storage_config", "cluster"])]
    storage: Option<String>,

    /// Standalone: the storage configuration file `berth serve` was given
    /// (`--storage-config`). Overrides --data-dir.
    #[arg(long, env = "BERTH_STORAGE_CONFIG", conflicts_with = "cluster")]
    storage_config: Option<PathBuf>,

    /// In a cluster: read the user and the signing key from Secrets (KUBECONFIG or in-cluster).
    #[arg(long)]
    cluster: bool,

    /// In a cluster: the namespace berth runs in.
    #[arg(long, env = "POD_NAMESPACE", default_value = "berth-system")]
    namespace: String,

    /// In a cluster: the Secret holding the signing key.
    #[arg(long, default_value = "berth-signing-key")]
    signing_key_secret: String,
}

fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let parsed: jiff::SignedDuration = text
        .parse()
        .map_err(|e| format!("{text:?} is not a duration like 6h or 30m: {e}"))?;
    std::time::Duration::try_from(parsed).map_err(|_| format!("{text:?} must be positive"))
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
    #[arg(long, env = "BERTH_STORAGE", conflicts_with = "storage_config")]
    storage: Option<String>,

    /// A storage configuration file (YAML): `s3: {bucket, prefix, region, endpoint,
    /// allowHttp, accessKeyId, secretAccessKeyFile, ...}` or `filesystem: {path}`.
    /// Settings it leaves out come from AWS_* variables. Overrides --data-dir.
    #[arg(long, env = "BERTH_STORAGE_CONFIG")]
    storage_config: Option<PathBuf>,

    /// The `service` named in auth challenges and tokens.
    #[arg(long, default_value = "berth", env = "BERTH_TOKEN_SERVICE")]
    token_service: String,

    /// The token endpoint's URL as clients must reach it, when it differs from
    /// `<scheme>://<Host header>/auth/token` (e.g. behind a proxy that rewrites Host).
    #[arg(long, env = "BERTH_TOKEN_REALM")]
    token_realm: Option<String>,

    /// How long `berth login-command --temporary` credentials last, in hours.
    #[arg(long, default_value_t = 6, env = "BERTH_TEMPORARY_CREDENTIAL_HOURS")]
    temporary_credential_hours: u64,

    /// Delete upload sessions left untouched this long (a client that started a push and
    /// went away). Checked at start and every hour; 0s turns it off.
    #[arg(long, default_value = "168h", value_parser = parse_duration, env = "BERTH_UPLOAD_EXPIRY")]
    upload_expiry: std::time::Duration,

    /// Memory that upload bodies in flight may hold, all uploads together: bytes, or
    /// with a KiB, MiB or GiB suffix. Each part write reserves its buffers before it
    /// starts (3 MiB on a directory, 55 MiB on S3); past the cap, uploads wait their turn.
    #[arg(long, default_value = "512MiB", value_parser = berth::byte_size::parse_bytes, env = "BERTH_MAX_UPLOAD_BUFFER")]
    max_upload_buffer: usize,

    /// A host name (`host[:port]`) under which workloads name this registry in their images,
    /// e.g. `registry.example.com` or `berth.berth-system.svc:5000` (repeatable, or
    /// comma-separated). A Trigger without a container name updates the containers whose
    /// image is its repository on one of these; the first is written into images that name
    /// none; it is also the address written into pull Secrets. Default: the listen
    /// address, and localhost:PORT on loopback or 0.0.0.0.
    #[arg(
        long = "registry-host",
        env = "BERTH_REGISTRY_HOSTS",
        value_delimiter = ','
    )]
    registry_hosts: Vec<String>,

    /// Threads that verify argon2 password hashes (each holds one hash's memory, 19 MiB
    /// with the default parameters). Default: one per core.
    #[arg(long, env = "BERTH_PASSWORD_CHECK_THREADS")]
    password_check_threads: Option<usize>,

    /// Password checks that may wait for a thread; more are answered at once with
    /// 429 TOOMANYREQUESTS and Retry-After. Default: 16 per thread.
    #[arg(long, env = "BERTH_PASSWORD_CHECK_QUEUE")]
    password_check_queue: Option<usize>,

    /// When garbage collection runs: a cron schedule (five fields, UTC), or `off`.
    /// It also runs after an AgingRule deleted tags, and on `POST /api/gc`.
    #[arg(long, default_value = "0 4 * * *", env = "BERTH_GC_SCHEDULE")]
    gc_schedule: String,

    /// Blobs uploaded (or linked) more recently than this are kept even when no manifest
    /// references them yet: a client uploads layers before the manifest that names them.
    #[arg(long, default_value = "1h", value_parser = parse_duration, env = "BERTH_GC_GRACE")]
    gc_grace: std::time::Duration,

    /// Manifests no tag reaches (pushed by digest, or whose tags moved or were deleted) are
    /// collected once they were last pushed this long ago.
    #[arg(long, default_value = "24h", value_parser = parse_duration, env = "BERTH_GC_UNTAGGED_DELAY")]
    gc_untagged_delay: std::time::Duration,

    /// With S3 storage, a collection keeps a marker object in the bucket (`gc/sweep`)
    /// renewed while it runs, so that pushes on other replicas that only link existing
    /// content wait for it and check what they link. A marker not renewed for this long
    /// is ignored (its replica died): the longest such a push waits for a dead leader.
    #[arg(long, default_value = "30s", value_parser = parse_duration, env = "BERTH_GC_SWEEP_MARKER_DURATION")]
    gc_sweep_marker_duration: std::time::Duration,

    /// For tests only: the sizes of S3 multipart parts (`FIRST,DOUBLING_EVERY,LARGEST,
    /// IN_MEMORY`), so that a test upload of some MiB crosses what a real one crosses
    /// at hundreds of GiB.
    #[arg(long, hide = true)]
    s3_part_schedule: Option<berth::storage::PartSchedule>,

    /// For tests only: pause each collection this long between sweeping the repositories
    /// and sweeping content, so that writes land while it runs.
    #[arg(long, default_value = "0s", value_parser = parse_duration, hide = true)]
    gc_test_pause: std::time::Duration,

    /// This process's name among replicas sharing the storage: each writes its pull
    /// counts to its own objects, and readers sum them. Default: the host name (the
    /// Pod name in a cluster), else `standalone`.
    #[arg(long, env = "BERTH_REPLICA_ID")]
    replica_id: Option<String>,

    /// How often pull counts gathered in memory are written to storage: at most this
    /// much counting is lost in a crash.
    #[arg(long, default_value = "5s", value_parser = parse_duration, env = "BERTH_PULL_COUNT_FLUSH")]
    pull_count_flush: std::time::Duration,

    /// How blobs stored in a local folder are served: `mapped` writes them to the socket
    /// straight from the page cache (one copy fewer); `copied` reads them into a buffer
    /// first, for a folder whose files something other than berth might truncate.
    #[arg(long, default_value = "mapped", env = "BERTH_BLOB_READS")]
    blob_reads: BlobReads,

    /// Replicas sharing storage append each push they take to a log in it, and the
    /// leader lists the log this often to hand the others' pushes to its triggers and
    /// sync rules: a follower's push waits at most about this long, and the leader makes
    /// one LIST request each time (followers none). `0s` turns the push log off.
    #[arg(long, default_value = "200ms", value_parser = parse_duration, env = "BERTH_PUSH_LOG_POLL")]
    push_log_poll: std::time::Duration,

    /// The leader deletes push log records older than this.
    #[arg(long, default_value = "10m", value_parser = parse_duration, env = "BERTH_PUSH_LOG_RETENTION")]
    push_log_retention: std::time::Duration,

    /// With S3 storage: answer a GET of a whole blob at least this large (bytes, or with
    /// a KiB, MiB or GiB suffix) with `307 Temporary Redirect` to a presigned S3 URL, so
    /// the bytes go from S3 to the client and not through berth. Access is checked first;
    /// ranged GETs and HEAD are still answered by berth. Default: off.
    #[arg(long, value_parser = berth::byte_size::parse_bytes, env = "BERTH_BLOB_REDIRECT_MIN_SIZE")]
    blob_redirect_min_size: Option<usize>,

    /// How long a redirect's presigned URL stays valid (at most 7 days).
    #[arg(long, default_value = "5m", value_parser = parse_duration, env = "BERTH_BLOB_REDIRECT_EXPIRY")]
    blob_redirect_expiry: std::time::Duration,

    /// The S3 endpoint as clients reach it (`https://s3.example.com`), when the one
    /// berth uses (AWS_ENDPOINT, the storage file's `endpoint`) is internal. URLs are
    /// signed for this host, so it must reach the same bucket and pass the Host header on.
    #[arg(
        long,
        env = "BERTH_BLOB_REDIRECT_ENDPOINT",
        requires = "blob_redirect_min_size"
    )]
    blob_redirect_endpoint: Option<String>,
}

impl RegistryArgs {
    /// The garbage collector these flags describe, for `store`.
    fn collector(
        &self,
        store: &Store,
        registry: &mut prometheus_client::registry::Registry,
    ) -> anyhow::Result<Arc<Collector>> {
        let schedule = match self.gc_schedule.trim() {
            "off" | "" => None,
            text => Some(Schedule::parse(text).context("--gc-schedule")?),
        };
        let options = GcOptions {
            grace: self.gc_grace,
            untagged_delay: self.gc_untagged_delay,
            marker_duration: self.gc_sweep_marker_duration,
            pause_before_content: self.gc_test_pause,
        };
        store.register_sweep_metrics(registry);
        Ok(Collector::new(store.clone(), options, schedule, registry))
    }

    /// The push log's settings, or `None` when it is turned off.
    fn push_log(&self) -> Option<PushLogSettings> {
        (!self.push_log_poll.is_zero()).then_some(PushLogSettings {
            poll: self.push_log_poll,
            retention: self.push_log_retention,
        })
    }

    fn auth_settings(&self) -> berth::auth::Settings {
        let defaults = berth::auth::Settings::default();
        let threads = self
            .password_check_threads
            .unwrap_or(defaults.password_threads)
            .max(1);
        berth::auth::Settings {
            service: self.token_service.clone(),
            realm: self.token_realm.clone(),
            temporary_ttl: std::time::Duration::from_secs(self.temporary_credential_hours * 3600),
            password_threads: threads,
            password_queue: self.password_check_queue.unwrap_or(16 * threads),
            ..defaults
        }
    }
}

#[derive(clap::Args)]
struct ServeArgs {
    #[command(flatten)]
    registry: RegistryArgs,

    /// A folder of berth resources as YAML (Namespace, Repository, …, as in examples/),
    /// applied at start and whenever a file changes. Without it every namespace accepts pushes.
    #[arg(long, env = "BERTH_CONFIG_DIR")]
    config_dir: Option<PathBuf>,

    /// The key that signs tokens and login credentials (created if missing). Default:
    /// `auth/signing-key` in the storage: a file in the storage directory, or on S3 an
    /// object the first replica creates and every other replica (and restart) reads.
    #[arg(long, env = "BERTH_SIGNING_KEY_FILE")]
    signing_key_file: Option<PathBuf>,

    /// With S3 storage, replicas elect a leader with a lease object in the bucket; the
    /// leader alone runs garbage collection, aging, sync and Triggers. When the leader
    /// stops renewing, another replica takes over after this long.
    #[arg(long, default_value = "15s", value_parser = parse_duration, env = "BERTH_LEADER_LEASE_DURATION")]
    leader_lease_duration: std::time::Duration,

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

    /// The Secret (in --namespace) holding the key that signs tokens and login
    /// credentials; created when missing, shared by all replicas.
    #[arg(
        long,
        default_value = "berth-signing-key",
        env = "BERTH_SIGNING_KEY_SECRET"
    )]
    signing_key_secret: String,

    /// The audiences a ServiceAccount token must be issued for to sign in (comma-separated):
    /// Pods project one with a `serviceAccountToken` volume of that `audience`. A token
    /// for another audience (the apiserver's own, say) is refused.
    #[arg(
        long,
        default_value = berth::auth::service_accounts::DEFAULT_AUDIENCE,
        value_delimiter = ',',
        env = "BERTH_SERVICE_ACCOUNT_AUDIENCE"
    )]
    service_account_audience: Vec<String>,
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

/// Serves the registry of `state` on the bound `listener`.
async fn serve_registry(
    args: &RegistryArgs,
    listener: tokio::net::TcpListener,
    state: RegistryState,
    location: &StorageLocation,
    gc: Arc<Collector>,
    cluster: Option<kube::Client>,
) -> anyhow::Result<()> {
    tokio::spawn(gc.clone().run_on_schedule());
    if !args.upload_expiry.is_zero() {
        // Like garbage collection, the leader's job when replicas share storage.
        let leading = gc.clone();
        tokio::spawn(berth::storage::expire_uploads_periodically(
            state.store.clone(),
            args.upload_expiry,
            state.metrics.uploads_expired.clone(),
            move || leading.is_active(),
        ));
    }
    let gc_routes = berth::gc::router(gc, state.auth.clone(), state.policy.clone());
    tokio::spawn(berth::storage::flush_pull_counts_periodically(
        state.store.clone(),
        args.pull_count_flush
            .max(std::time::Duration::from_millis(100)),
    ));
    // The web UI's listings read per-repository summaries; fill them before anyone asks.
    tokio::spawn(state.store.clone().warm_summaries());
    let store = state.store.clone();
    let addr = listener.local_addr()?;
    tracing::info!(%addr, "berth registry listening");
    println!("berth listening on http://{addr} (storage: {location})");
    let app = berth::server::app_with_cluster(state, cluster).merge(gc_routes);
    berth::server::serve(listener, app).await?;
    // Counts gathered since the last flush survive a graceful stop.
    if let Err(e) = store.flush_pull_counts().await {
        tracing::warn!(error = %e, "writing pull counts at shutdown failed");
    }
    Ok(())
}

/// The replication engine, storing what it pulls through `state`'s own router.
fn sync_engine(state: &RegistryState, metrics: Arc<SyncMetrics>) -> Arc<sync::Engine> {
    let local = sync::client::Registry::in_process(
        berth::registry::router(state.clone()),
        sync::engine_identity(),
    );
    sync::Engine::new(local, state.store.clone(), metrics)
}

fn location(args: &RegistryArgs) -> anyhow::Result<StorageLocation> {
    Ok(match (&args.storage, &args.storage_config) {
        (Some(s), _) => StorageLocation::parse(s)?,
        (None, Some(file)) => berth::storage::config::load(file)?,
        (None, None) => StorageLocation::Local(args.data_dir.clone()),
    })
}

/// The opened store and where it is, read once from the flags (and storage file).
struct Storage {
    store: Store,
    location: StorageLocation,
    /// This process's name among replicas (`--replica-id`).
    replica: String,
}

fn open_store(args: &RegistryArgs) -> anyhow::Result<Storage> {
    let location = location(args)?;
    let store = Store::open(&location)
        .with_context(|| format!("opening storage {location}"))?
        .with_upload_buffer(args.max_upload_buffer)
        .context("--max-upload-buffer")?
        .with_blob_reads(args.blob_reads);
    let store = match args.s3_part_schedule {
        Some(schedule) => store.with_part_schedule(schedule),
        None => store,
    };
    let replica = args
        .replica_id
        .clone()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "standalone".into());
    let mut store = store.with_replica(&replica);
    if let Some(min_size) = args.blob_redirect_min_size {
        let settings = RedirectSettings {
            min_size: min_size as u64,
            expiry: args.blob_redirect_expiry,
            endpoint: args.blob_redirect_endpoint.clone(),
        };
        store = store
            .with_blob_redirects(&location, &settings)
            .context("--blob-redirect-min-size")?;
    }
    Ok(Storage {
        store,
        location,
        replica,
    })
}

async fn standalone_signing_key(args: &ServeArgs, storage: &Storage) -> anyhow::Result<SigningKey> {
    let path = match (&args.signing_key_file, &storage.location) {
        (Some(path), _) => path.clone(),
        (None, StorageLocation::Local(dir)) => dir.join("auth/signing-key"),
        (None, StorageLocation::S3(_)) => {
            // One key per bucket, so every replica verifies what another issued.
            let bytes = storage
                .store
                .shared_signing_key(|| SigningKey::generate().bytes().to_vec())
                .await
                .context("reading or creating the signing key in the bucket")?;
            return SigningKey::from_bytes(bytes.to_vec()).with_context(|| {
                format!(
                    "the signing key in the bucket is shorter than {} bytes",
                    berth::auth::key::KEY_LEN
                )
            });
        }
    };
    Ok(SigningKey::load_or_create(&path)?)
}

/// Whether this process leads the replicas sharing its storage, kept up to date. A
/// local directory has one process; S3 replicas elect one with a lease in the bucket.
async fn standalone_leadership(
    args: &ServeArgs,
    storage: &Storage,
    identity: &str,
    metrics: Arc<ReplicaMetrics>,
) -> tokio::sync::watch::Receiver<bool> {
    let (tx, rx) = tokio::sync::watch::channel(true);
    if storage.store.is_local() {
        metrics.set_leading(true);
        // The sender lives as long as the process: the answer never changes.
        tokio::spawn(async move {
            let _always = tx;
            std::future::pending::<()>().await
        });
        return rx;
    }
    let mut election = berth::replicas::lease::BucketElection::new(
        storage.store.clone(),
        identity,
        args.leader_lease_duration,
        metrics,
    );
    // Decide before anything starts, so a lone replica leads from its first request.
    tx.send_replace(election.attempt().await);
    tokio::spawn(election.run(tx));
    rx
}

/// The push log of this process: its pushes are appended, and while it leads (`leading`)
/// the other replicas' are read into `events`. `None` when turned off or alone on a directory.
fn push_log(
    args: &RegistryArgs,
    store: &Store,
    writer: &str,
    metrics: &Arc<ReplicaMetrics>,
) -> (PushEvents, Option<PushLogTail>) {
    let Some(settings) = args.push_log() else {
        return (PushEvents::default(), None);
    };
    let (events, outbox) = PushEvents::with_outbox();
    tokio::spawn(berth::replicas::push_log::write(
        store.clone(),
        writer.to_string(),
        outbox,
        metrics.clone(),
    ));
    let tail = PushLogTail::new(
        store.clone(),
        writer.to_string(),
        events.clone(),
        settings,
        metrics.clone(),
    );
    (events, Some(tail))
}

/// Clears the sync engine's rules when dropped: a replica that stops leading leaves
/// replication to the new leader.
struct ClearRulesOnDrop(Arc<sync::Engine>);

impl Drop for ClearRulesOnDrop {
    fn drop(&mut self) {
        self.0.clear();
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let storage = open_store(&args.registry)?;
    let users = match &args.config_dir {
        None => Users::default(),
        Some(_) => Users::pending(),
    };
    let mut metrics = Metrics::new_unshared();
    let trigger_metrics = TriggerMetrics::register(&mut metrics.registry);
    let sync_metrics = SyncMetrics::register(&mut metrics.registry);
    let replica_metrics = ReplicaMetrics::register(&mut metrics.registry);
    let gc = args
        .registry
        .collector(&storage.store, &mut metrics.registry)?;
    let writer = berth::replicas::writer_id();
    let identity = format!("{}-{writer}", storage.replica);
    let leading = standalone_leadership(&args, &storage, &identity, replica_metrics.clone()).await;
    // A directory has one process: nobody else to tell of a push.
    let (events, tail) = match storage.store.is_local() {
        true => (PushEvents::default(), None),
        false => push_log(&args.registry, &storage.store, &writer, &replica_metrics),
    };
    if let Some(tail) = tail {
        let tail = Arc::new(tail);
        tokio::spawn(berth::replicas::while_leading(leading.clone(), move || {
            let tail = tail.clone();
            async move { tail.run().await }
        }));
    }
    tokio::spawn({
        let gc = gc.clone();
        let mut leading = leading.clone();
        async move {
            loop {
                gc.set_active(*leading.borrow_and_update());
                if leading.changed().await.is_err() {
                    return;
                }
            }
        }
    });
    let (listener, hosts) = bind(&args.registry).await?;
    let policy = match &args.config_dir {
        None => {
            tracing::warn!(
                "no --config-dir: every namespace accepts pushes and nobody needs to sign in"
            );
            Policy::new(Snapshot::open())
        }
        Some(dir) => {
            anyhow::ensure!(
                dir.is_dir(),
                "--config-dir {} is not a directory",
                dir.display()
            );
            let policy = Policy::pending();
            tokio::spawn(watch_folder(
                ConfigFolder::new(dir),
                policy.clone(),
                users.clone(),
            ));
            let aging = (
                dir.clone(),
                storage.store.clone(),
                policy.clone(),
                gc.clone(),
            );
            tokio::spawn(berth::replicas::while_leading(leading.clone(), move || {
                let (dir, store, policy, gc) = &aging;
                berth::aging::standalone::run(
                    ConfigFolder::new(dir),
                    store.clone(),
                    policy.clone(),
                    gc.clone(),
                )
            }));
            policy
        }
    };
    let auth = Auth::new(
        users,
        standalone_signing_key(&args, &storage).await?,
        args.registry.auth_settings(),
        None,
        metrics.password_checks.clone(),
    );
    trigger::standalone::start(
        args.config_dir.as_deref(),
        args.kubeconfig.as_deref(),
        trigger::standalone::Parts {
            store: storage.store.clone(),
            policy: policy.clone(),
            hosts,
            metrics: trigger_metrics,
            pushes: events.clone(),
            leading: leading.clone(),
        },
    )
    .await?;
    let state = RegistryState {
        store: storage.store.clone(),
        metrics: Arc::new(metrics),
        policy,
        events: events.clone(),
        auth,
    };
    if let Some(dir) = &args.config_dir {
        let engine = sync_engine(&state, sync_metrics);
        tokio::spawn(engine.clone().listen(events));
        let (first_pass, applied) = tokio::sync::oneshot::channel();
        let first_pass = Arc::new(std::sync::Mutex::new(Some(first_pass)));
        if !*leading.borrow() {
            // A follower runs no rules: nothing to wait for.
            if let Some(tx) = first_pass.lock().expect("first pass lock").take() {
                let _ = tx.send(());
            }
        }
        let (dir, store) = (dir.clone(), storage.store.clone());
        tokio::spawn(berth::replicas::while_leading(leading.clone(), move || {
            let engine = engine.clone();
            let store = store.clone();
            let first = first_pass.lock().expect("first pass lock").take();
            let folder = ConfigFolder::new(&dir);
            async move {
                let _clear = ClearRulesOnDrop(engine.clone());
                sync::standalone::run(folder, engine, store, first).await
            }
        }));
        // Serve once the folder's SyncRules listen for pushes, so none is missed; a
        // folder that cannot be read is reported by the rules' task and served anyway.
        if tokio::time::timeout(std::time::Duration::from_secs(10), applied)
            .await
            .is_err()
        {
            tracing::warn!(
                "the config folder's SyncRules are not applied after 10s; serving anyway"
            );
        }
    }
    serve_registry(&args.registry, listener, state, &storage.location, gc, None).await
}

async fn operator(args: OperatorArgs) -> anyhow::Result<()> {
    let client = kube::Client::try_default()
        .await
        .context("connecting to Kubernetes (in-cluster, or KUBECONFIG)")?;
    let storage = open_store(&args.registry)?;
    let policy = Policy::pending();
    let mut metrics = Metrics::new_unshared();
    let replica_metrics = ReplicaMetrics::register(&mut metrics.registry);
    // Every replica logs its pushes; the Lease holder reads the others' (see run_operator).
    let writer = berth::replicas::writer_id();
    let (events, tail) = push_log(&args.registry, &storage.store, &writer, &replica_metrics);
    let controller_metrics = ControllerMetrics::register(&mut metrics.registry);
    let trigger_metrics = TriggerMetrics::register(&mut metrics.registry);
    let sync_metrics = SyncMetrics::register(&mut metrics.registry);
    let gc = args
        .registry
        .collector(&storage.store, &mut metrics.registry)?;
    // Only the leader collects; the operator turns it on when this replica leads.
    gc.set_active(false);
    let metrics = Arc::new(metrics);
    let (listener, hosts) = bind(&args.registry).await?;
    let identity = args
        .identity
        .clone()
        .unwrap_or_else(|| format!("berth-{}", uuid::Uuid::new_v4()));
    let election = controller::leader::LeaderElection::new(
        client.clone(),
        &args.namespace,
        &args.lease_name,
        &identity,
    );
    let key = controller::auth_secrets::signing_key(
        client.clone(),
        &args.namespace,
        &args.signing_key_secret,
    )
    .await?;
    let users = Users::pending();
    tokio::spawn(controller::auth_secrets::watch_users(
        client.clone(),
        args.namespace.clone(),
        users.clone(),
        controller::pull_secrets::PullSecrets {
            client: client.clone(),
            namespace: args.namespace.clone(),
            key: key.clone(),
            // The first --registry-host the user named: how kubelets reach the registry.
            registry_host: args.registry.registry_hosts.first().cloned(),
        },
    ));
    let auth = Auth::new(
        users,
        key,
        args.registry.auth_settings(),
        Some(ServiceAccountReviewer::new(
            Arc::new(controller::token_review::ApiTokenReviews::new(
                client.clone(),
            )),
            args.service_account_audience.clone(),
        )),
        metrics.password_checks.clone(),
    );
    let state = RegistryState {
        store: storage.store.clone(),
        metrics,
        policy: policy.clone(),
        events: events.clone(),
        auth,
    };
    let ctx = Arc::new(
        controller::Context::new(
            client.clone(),
            storage.store.clone(),
            policy.clone(),
            controller_metrics,
            args.namespace.clone(),
            args.selector.clone(),
            events.clone(),
            sync_engine(&state, sync_metrics),
        )
        .with_triggers(hosts, trigger_metrics)
        .with_gc(gc.clone())
        .with_replicas(tail, replica_metrics)
        .with_events(&identity),
    );
    tokio::spawn(controller::run_operator(ctx, election));
    serve_registry(
        &args.registry,
        listener,
        state,
        &storage.location,
        gc,
        Some(client),
    )
    .await
}

/// The key `berth serve` signs with, found where it keeps it: the key file, the data
/// directory, or the bucket its replicas share.
async fn login_signing_key(args: &LoginCommandArgs) -> anyhow::Result<SigningKey> {
    let location = match (&args.storage, &args.storage_config) {
        (Some(s), _) => StorageLocation::parse(s)?,
        (None, Some(file)) => berth::storage::config::load(file)?,
        (None, None) => StorageLocation::Local(args.data_dir.clone()),
    };
    let path = match (&args.signing_key_file, &location) {
        (Some(path), _) => path.clone(),
        (None, StorageLocation::Local(dir)) => dir.join("auth/signing-key"),
        (None, StorageLocation::S3(_)) => {
            let store =
                Store::open(&location).with_context(|| format!("opening storage {location}"))?;
            let bytes = store
                .shared_signing_key(|| SigningKey::generate().bytes().to_vec())
                .await
                .context("reading or creating the signing key in the bucket")?;
            return SigningKey::from_bytes(bytes.to_vec()).with_context(|| {
                format!(
                    "the signing key in the bucket is shorter than {} bytes",
                    berth::auth::key::KEY_LEN
                )
            });
        }
    };
    Ok(SigningKey::load_or_create(&path)?)
}

async fn login_command(args: LoginCommandArgs) -> anyhow::Result<()> {
    let (user, key) = if args.cluster {
        let client = kube::Client::try_default()
            .await
            .context("connecting to Kubernetes (in-cluster, or KUBECONFIG)")?;
        let key = controller::auth_secrets::signing_key(
            client.clone(),
            &args.namespace,
            &args.signing_key_secret,
        )
        .await?;
        let user = controller::auth_secrets::find_user(client, &args.namespace, &args.user).await?;
        (user, key)
    } else {
        let dir = args
            .config_dir
            .as_ref()
            .context("give --config-dir (standalone) or --cluster")?;
        let loaded = ConfigFolder::new(dir).load();
        let user = loaded
            .users
            .into_iter()
            .find(|u| u.name == args.user)
            .with_context(|| format!("no user {:?} in {}", args.user, dir.display()))?;
        (user, login_signing_key(&args).await?)
    };
    let (credential, until) = berth::auth::login_command::credential(
        &key,
        &user,
        args.temporary.then_some(args.valid_for),
    );
    if let Some(until) = until {
        eprintln!("# valid until {until}");
    }
    println!(
        "{}",
        berth::auth::login_command::docker_login_line(&args.registry, &user.name, &credential)
    );
    Ok(())
}

fn hash_password() -> anyhow::Result<()> {
    let mut password = String::new();
    std::io::stdin().read_line(&mut password)?;
    let password = password.trim_end_matches(['\n', '\r']);
    anyhow::ensure!(!password.is_empty(), "give the password on stdin");
    let hash = berth::auth::passwords::hash_password(password)
        .map_err(|e| anyhow::anyhow!("hashing failed: {e}"))?;
    println!("{hash}");
    Ok(())
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
        Command::LoginCommand(args) => login_command(args).await,
        Command::HashPassword => hash_password(),
    }
}
