//! Starting a node: storage, Raft, listeners, background duties, shutdown.
//! [`run`] reads as the list of steps; each step is a function below.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use metrics_exporter_prometheus::PrometheusHandle;
use openraft::{Config, SnapshotPolicy};
use shoal_actors::deliver::InboxDelivery;
use shoal_actors::kafka::KafkaClient;
use shoal_actors::Messaging;
use shoal_outbound::Outbound;
use shoal_raft::{CatchUp, Linearizer, LogStore, NodeAddr, NodeId, Raft, StateMachine};
use shoal_search::{Limits, Logs, LogsConfig, Retention};
use shoal_storage::outbox::Outbox;
use shoal_storage::{OpenOptions, Store, StoreClosed};
use shoal_tls::TlsAcceptor;
use shoal_transport::{
    serve_rpc, Forwarder, MessageInbox, PeerAuth, PeerServices, RemoteError, RemoteErrorKind,
    RemoveHandler, RpcNetwork,
};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch, Notify};

use crate::api::AppState;
use crate::api_server::{self, ConnectionLimits};
use crate::cluster::{self, Cluster, Gossip, Removals};
use crate::compat::otlp;
use crate::faults::Faults;
use crate::routes;
use crate::services::compaction::compact_history;
use crate::services::messaging::{self, RpcTransport};
use crate::services::shoal::{propose_batches, read_permits, Pending, Shoal, PROPOSAL_QUEUE};
use crate::services::watch_hub::WatchHub;
use crate::services::{leases, logs, workflow_events, workflow_runner};
use crate::settings::{self, OptionalListener, Settings};
use crate::telemetry::{self, TelemetryGuard};

/// How long open requests get to finish at shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);
/// How often the node checks whether its Raft core has stopped.
const RAFT_CHECK_EVERY: Duration = Duration::from_millis(250);
/// Memory of one log partition's index writer (Tantivy's minimum is 15 MB).
const LOG_WRITER_BYTES: usize = 64 << 20;

/// Longest a snapshot chunk's send, or the install after the last one, may
/// take before openraft starts the transfer again.
const SNAPSHOT_INSTALL_TIMEOUT_MS: u64 = 30_000;
/// Bytes per snapshot chunk.
const SNAPSHOT_CHUNK_BYTES: u64 = 1024 * 1024;
/// Outbox deliveries to the workflow event inbox waiting for it (each
/// deliverer waits for its answer, so this is rarely more than one).
const INBOX_DELIVERIES: usize = 16;
/// Audit records waiting to be indexed; past this they are counted as dropped.
const AUDIT_QUEUE: usize = 8192;

/// Run a node until it is stopped. `store_closed` receives a handle on the
/// node's database, for the caller to wait, once the async runtime is gone,
/// until the database is closed before the process exits.
pub async fn run(settings: Settings, store_closed: &mut Option<StoreClosed>) -> anyhow::Result<()> {
    // Before anything touches the data dir: a bad CA file stops the start
    // with nothing created, opened or joined.
    let outbound = Outbound::new(
        settings.outbound_policy.clone(),
        settings.outbound_ca_file.as_deref(),
    )?;
    let tls = crate::tls::load(&settings)?;
    let peer_http = crate::tls::peer_http_client(&settings)?;
    std::fs::create_dir_all(&settings.data_dir)
        .with_context(|| format!("creating data dir {}", settings.data_dir.display()))?;
    let mut telemetry = telemetry::init_node(&settings)?;
    let prometheus = telemetry::init_metrics()?;
    match api_server::raise_open_files_limit() {
        Some(limit) if limit < (settings.max_connections as u64).saturating_add(1024) => {
            tracing::warn!(
                open_files = limit,
                max_connections = settings.max_connections,
                "the open-files limit is lower than --max-connections plus 1024 for the node's own files; a flood of connections will meet it first"
            );
        }
        _ => {}
    }
    let started = Instant::now();
    let identity = settings::node_id(&settings)?;
    let node_id = identity.id;

    let listeners = bind_listeners(&settings).await?;
    let faults = Faults::from_env();
    let store = open_store(&settings, &faults).await?;
    *store_closed = Some(store.closed());
    let logs = open_logs(&settings, node_id).await?;
    let auth = PeerAuth::new(
        settings.cluster_secret.as_deref(),
        crate::tls::peer_tls(&settings, tls.as_ref())?,
    );
    let core = start_raft(
        &settings,
        node_id,
        identity.generated,
        &store,
        &faults,
        &auth,
    )
    .await?;
    let cluster = start_cluster(&settings, node_id, &core, &auth).await?;
    let (proposals, proposal_queue) = mpsc::channel(PROPOSAL_QUEUE);
    let (audit, audit_records) = mpsc::channel(AUDIT_QUEUE);
    let (inbox_deliveries, inbox_receiver) = mpsc::channel(INBOX_DELIVERIES);
    let (messaging, transport) = start_messaging(
        &settings,
        node_id,
        &store,
        &auth,
        outbound.clone(),
        inbox_deliveries,
    )
    .await?;
    let peer_services = peer_services(&cluster, &messaging, &logs, &settings);

    let shoal = Arc::new(Shoal {
        node_id,
        settings: settings.clone(),
        raft: core.raft.clone(),
        store,
        hub: core.hub.clone(),
        committed_index: core.committed_index.clone(),
        started,
        forwarder: cluster.forwarder.clone(),
        cluster,
        linearizer: core.linearizer.clone(),
        proposals,
        shutdown: Notify::new(),
        messaging: messaging.clone(),
        logs,
        lease_timers: Arc::default(),
        caught_up: Default::default(),
        unfinished_instances: Default::default(),
        waiting_events: Default::default(),
        outbound,
        audit,
        acl: Arc::new(shoal_acl::Acl::new(
            settings.acl,
            settings.initial_management_token.as_deref(),
        )),
        peer_http,
        faults,
        evaluator: Arc::new(crate::services::evaluator::Evaluator::new()),
        space: Default::default(),
        reads: read_permits(),
        digest: Default::default(),
    });
    if shoal.acl.enabled() {
        tokio::spawn(logs::index_records(
            shoal.logs.clone(),
            crate::api::audit::AUDIT_STREAM,
            audit_records,
            "shoal_audit_dropped_total",
        ));
    }
    serve_peers(listeners.rpc, core, auth, peer_services);
    start_writes(&shoal, proposal_queue);
    bootstrap(&shoal).await?;
    spawn_duties(&shoal, transport);
    start_messaging_delivery(&shoal, inbox_receiver).await;
    let (stop, stopped) = watch::channel(false);
    let acceptor = tls.map(|tls| {
        crate::tls::spawn_reloader(tls.certificate);
        tls.acceptor
    });
    serve_ingest(
        &shoal,
        &mut telemetry,
        listeners.otlp_grpc,
        listeners.otlp_http,
        acceptor.clone(),
        stopped.clone(),
    );
    let server = serve_api(&shoal, listeners.api, prometheus, acceptor, stopped);
    let raft_failure = wait_for_stop(&shoal).await;
    shut_down(&shoal.raft, server, stop, raft_failure).await
}

/// The node's listeners, bound before anything else is started.
struct Listeners {
    api: TcpListener,
    rpc: TcpListener,
    otlp_grpc: Option<TcpListener>,
    otlp_http: Option<TcpListener>,
}

/// Bind first: a port in use is the most common start-up failure.
async fn bind_listeners(settings: &Settings) -> anyhow::Result<Listeners> {
    let api = TcpListener::bind(settings.api)
        .await
        .with_context(|| format!("binding the API address {}", settings.api))?;
    let rpc = TcpListener::bind(settings.rpc)
        .await
        .with_context(|| format!("binding the RPC address {}", settings.rpc))?;
    let otlp_grpc = bind_optional(settings.otlp_grpc, "OTLP/gRPC").await?;
    let otlp_http = bind_optional(settings.otlp_http, "OTLP/HTTP").await?;
    Ok(Listeners {
        api,
        rpc,
        otlp_grpc,
        otlp_http,
    })
}

/// Bind an optional listener: a named address must bind; the default one
/// is skipped with a warning when taken (several nodes on one host).
async fn bind_optional(
    listener: OptionalListener,
    what: &str,
) -> anyhow::Result<Option<TcpListener>> {
    let Some(addr) = listener.addr else {
        return Ok(None);
    };
    match TcpListener::bind(addr).await {
        Ok(bound) => Ok(Some(bound)),
        Err(e) if !listener.explicit => {
            tracing::warn!(
                %addr,
                error = %e,
                "the default {what} address is taken; {what} is off (set its flag to choose another address)",
            );
            Ok(None)
        }
        Err(e) => Err(e).with_context(|| format!("binding the {what} address {addr}")),
    }
}

/// Open the node's RocksDB.
async fn open_store(settings: &Settings, faults: &Faults) -> anyhow::Result<Store> {
    let db_path = settings.data_dir.join("db");
    let open_options = OpenOptions {
        lose_unsynced_writes: faults.lose_unsynced_writes,
        slow_snapshot_import: faults.snapshot_import_delay,
    };
    tokio::task::spawn_blocking(move || Store::open_with(&db_path, open_options))
        .await?
        .with_context(|| format!("opening the database in {}", settings.data_dir.display()))
}

/// Open the log and trace indexes with the configured retention and limits.
async fn open_logs(settings: &Settings, node_id: NodeId) -> anyhow::Result<Logs> {
    let logs_config = LogsConfig {
        dir: settings.data_dir.join("search"),
        node_id,
        commit_interval: Duration::from_millis(settings.logs_commit_ms),
        retention: Retention {
            max_age: Duration::from_secs(settings.logs_retention_days * 86_400),
            max_bytes_per_stream: settings.logs_retention_bytes,
            streams: settings
                .logs_stream_retention
                .iter()
                .map(|(stream, (days, mb))| {
                    (
                        stream.clone(),
                        (
                            days.map(|d| Duration::from_secs(d * 86_400)),
                            mb.map(|mb| mb.saturating_mul(1 << 20)),
                        ),
                    )
                })
                .collect(),
        },
        limits: Limits {
            wal_bytes: settings.logs_wal_max_bytes,
            indexing_bytes: settings.logs_indexing_max_bytes,
            disk_bytes: settings.logs_disk_max_bytes,
            writer_bytes: LOG_WRITER_BYTES,
            streams: settings.logs_max_streams,
        },
    };
    tokio::task::spawn_blocking(move || Logs::open(logs_config))
        .await?
        .with_context(|| {
            format!(
                "opening the log indexes in {}",
                settings.data_dir.join("search").display()
            )
        })
}

/// Raft and what is built with it.
struct RaftCore {
    raft: Raft,
    catch_up: Arc<CatchUp>,
    hub: Arc<WatchHub>,
    committed_index: Arc<std::sync::atomic::AtomicU64>,
    linearizer: Arc<Linearizer>,
}

/// Start Raft on the store: log store, state machine (feeding watches),
/// configuration, and the vote guard of a node that may have lost its disk.
async fn start_raft(
    settings: &Settings,
    node_id: NodeId,
    generated_id: bool,
    store: &Store,
    faults: &Faults,
    auth: &PeerAuth,
) -> anyhow::Result<RaftCore> {
    let raft_state_empty = {
        let store = store.clone();
        tokio::task::spawn_blocking(move || {
            Ok::<_, shoal_storage::StorageError>(
                store.raft_meta_get("vote")?.is_none() && store.log_last()?.is_none(),
            )
        })
        .await?
        .context("reading the Raft state")?
    };
    // Empty Raft state under an id that is not new: possibly a voter that
    // lost its disk (see `shoal_raft::CatchUp`). A made-up id never voted.
    let may_have_voted = raft_state_empty && !generated_id;
    let catch_up = Arc::new(
        CatchUp::open(&settings.data_dir, may_have_voted).context("writing the catch-up marker")?,
    );
    let hub = Arc::new(WatchHub::default());
    let log_store = LogStore::new(store.clone(), faults.log_sync_delay)
        .context("starting the WAL sync thread")?;
    let committed_index = log_store.committed_index();
    let state_machine = StateMachine::new(
        store.clone(),
        settings.data_dir.join("snapshots"),
        hub.clone(),
    )
    .context("opening the snapshot directory and the state machine")?;
    let config = Config {
        cluster_name: "shoal".into(),
        heartbeat_interval: settings.election_timeout_ms / 5,
        election_timeout_min: settings.election_timeout_ms,
        election_timeout_max: settings.election_timeout_ms * 2,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(settings.snapshot_every),
        max_in_snapshot_log_to_keep: settings.snapshot_every.min(1000),
        // openraft gives the send of each snapshot chunk, and the install of
        // the whole snapshot after the last one, 200 ms by default. Past
        // that the transfer starts again from the beginning, so a follower
        // whose snapshot takes longer to install never catches up (tests:
        // durability a_follower_catches_up_from_a_large_snapshot). Chunks
        // are smaller than the 3 MiB default so each one goes well within.
        install_snapshot_timeout: SNAPSHOT_INSTALL_TIMEOUT_MS,
        snapshot_max_chunk_size: SNAPSHOT_CHUNK_BYTES,
        ..Default::default()
    }
    .validate()
    .context("raft configuration")?;
    let raft = Raft::new(
        node_id,
        Arc::new(config),
        RpcNetwork::new(auth.clone()),
        log_store,
        state_machine,
    )
    .await
    .context("starting raft")?;
    let linearizer = Linearizer::new(raft.clone());
    Ok(RaftCore {
        raft,
        catch_up,
        hub,
        committed_index,
        linearizer,
    })
}

/// Join gossip; the cluster duties' state (shares the node's pooled
/// connections to peers).
async fn start_cluster(
    settings: &Settings,
    node_id: NodeId,
    core: &RaftCore,
    auth: &PeerAuth,
) -> anyhow::Result<Arc<Cluster>> {
    let gossip = Gossip::start(settings, node_id).await?;
    Ok(Arc::new(Cluster {
        node_id,
        raft: core.raft.clone(),
        gossip,
        forwarder: Arc::new(Forwarder::new(auth.clone())),
        removals: Removals::default(),
        catch_up: core.catch_up.clone(),
        voters: settings.voters,
        dead_node_grace: Duration::from_secs(settings.dead_node_grace_secs),
        request_timeout: Duration::from_millis(settings.request_timeout_ms),
    }))
}

/// The messaging service with its outbox, optional Kafka client, and its
/// transport to peers (on connections of its own).
async fn start_messaging(
    settings: &Settings,
    node_id: NodeId,
    store: &Store,
    auth: &PeerAuth,
    outbound: Outbound,
    inbox_deliveries: mpsc::Sender<InboxDelivery>,
) -> anyhow::Result<(Arc<Messaging>, Arc<RpcTransport>)> {
    let outbox_store = store.clone();
    let outbox = tokio::task::spawn_blocking(move || Outbox::open(outbox_store))
        .await?
        .context("opening the outbox")?;
    let kafka = match &settings.kafka {
        Some(connection) => {
            Some(KafkaClient::new(connection.clone()).context("creating the Kafka client")?)
        }
        None => None,
    };
    // The embedded SQL database's directory exists from the start, so
    // operators can create its tables before a sink first writes.
    let sql_dir = settings.data_dir.join("sql");
    std::fs::create_dir_all(&sql_dir).with_context(|| format!("creating {}", sql_dir.display()))?;
    let transport = RpcTransport::new(Forwarder::new(auth.clone()));
    let messaging = Messaging::new(
        node_id,
        outbox,
        transport.clone(),
        kafka,
        outbound,
        inbox_deliveries,
        settings.subscriber_buffer_bytes,
        // Migrations run while a PUT waits: they stop before it times out.
        Arc::new(shoal_sinks::Databases::new(
            sql_dir.join("local.sqlite"),
            Duration::from_millis(settings.request_timeout_ms * 4 / 5),
        )),
        Arc::new(shoal_datasets::Datasets::new(
            settings.data_dir.join("datasets"),
            node_id,
        )),
        store.clone(),
    );
    Ok((messaging, transport))
}

/// What this node answers to peers besides Raft: message frames for its
/// router, searches of its log engine, removals asked of it as leader.
fn peer_services(
    cluster: &Arc<Cluster>,
    messaging: &Messaging,
    logs: &Logs,
    settings: &Settings,
) -> PeerServices {
    let inbox: MessageInbox = {
        let router = messaging.router.clone();
        Arc::new(move |frame: &[u8]| {
            router
                .receive_frame(frame)
                .map_err(|e| RemoteError::new(RemoteErrorKind::Invalid, e.to_string()))
        })
    };
    let remove_node: RemoveHandler = {
        let cluster = cluster.clone();
        Arc::new(move |id| {
            let cluster = cluster.clone();
            Box::pin(async move { cluster.remove_member(id).await })
        })
    };
    PeerServices {
        catch_up: cluster.catch_up.clone(),
        messages: inbox,
        search: logs::peer_handler(logs.clone()),
        dataset_scan: crate::services::datasets::peer_handler(
            messaging.deliveries.datasets().clone(),
            Duration::from_millis(settings.request_timeout_ms),
        ),
        remove_node,
    }
}

/// Answer peers on the RPC listener, and end catching up when Raft allows.
fn serve_peers(listener: TcpListener, core: RaftCore, auth: PeerAuth, services: PeerServices) {
    tokio::spawn(end_catch_up(core.raft.clone(), core.catch_up));
    tokio::spawn(serve_rpc(
        listener,
        core.raft,
        core.linearizer,
        auth,
        services,
    ));
}

/// Start batching proposals into Raft entries.
fn start_writes(shoal: &Arc<Shoal>, queue: mpsc::Receiver<Pending>) {
    tokio::spawn(propose_batches(shoal.clone(), queue));
}

/// A node whose Raft is not initialised joins through the seeds, initialises
/// a single-node cluster, or waits to form one (`--bootstrap-expect`).
async fn bootstrap(shoal: &Arc<Shoal>) -> anyhow::Result<()> {
    let (raft, settings) = (&shoal.raft, &shoal.settings);
    if raft.is_initialized().await.context("reading raft state")? {
        return Ok(());
    }
    match settings.bootstrap_expect {
        0 => {
            tracing::info!(seeds = ?settings.seeds, "joining an existing cluster through the seeds")
        }
        1 => {
            tracing::info!("initialising a new single-node cluster");
            let me = NodeAddr {
                rpc: settings.advertise_rpc.clone(),
                api: settings.advertise_api.clone(),
            };
            raft.initialize(BTreeMap::from([(shoal.node_id, me)]))
                .await
                .context("initialising raft")?;
        }
        expect => {
            tokio::spawn(cluster::form_cluster(shoal.cluster.clone(), expect));
        }
    }
    Ok(())
}

/// The background duties every node runs (most act only on the leader).
fn spawn_duties(shoal: &Arc<Shoal>, transport: Arc<RpcTransport>) {
    tokio::spawn(cluster::publish_state(shoal.cluster.clone()));
    let audited = shoal.clone();
    tokio::spawn(cluster::reconcile_membership(
        shoal.cluster.clone(),
        move |change| crate::api::audit::record_membership(&audited, change),
    ));
    tokio::spawn(leases::run(shoal.clone()));
    tokio::spawn(compact_history(shoal.clone()));
    tokio::spawn(crate::services::space::watch_space(shoal.clone()));
    tokio::spawn(crate::services::reports::schedule(shoal.clone()));
    tokio::spawn(workflow_runner::run(shoal.clone()));
    tokio::spawn(messaging::sync_interest(shoal.clone(), transport));
}

/// The configuration first: deliverers and publishes look webhooks and
/// routing rules up in it, and the datasets' maintenance its datasets (its
/// first round runs at once, which before the configuration was loaded
/// found no dataset and waited a minute). Then follow it and resume
/// deliveries (those to the workflow event inbox come back on
/// `inbox_receiver`).
async fn start_messaging_delivery(
    shoal: &Arc<Shoal>,
    inbox_receiver: mpsc::Receiver<InboxDelivery>,
) {
    let config_revision = messaging::load_config(shoal).await;
    tokio::spawn(messaging::follow_config(shoal.clone(), config_revision));
    tokio::spawn(crate::services::datasets::maintain(shoal.clone()));
    tokio::spawn(workflow_events::take_deliveries(
        shoal.clone(),
        inbox_receiver,
    ));
    shoal.messaging.resume_deliveries().await;
}

/// Index the node's own logs, and receive OTLP on its listeners.
fn serve_ingest(
    shoal: &Shoal,
    telemetry: &mut TelemetryGuard,
    otlp_grpc: Option<TcpListener>,
    otlp_http: Option<TcpListener>,
    tls: Option<TlsAcceptor>,
    stopped: watch::Receiver<bool>,
) {
    if let Some(events) = telemetry.own_logs.take() {
        tokio::spawn(logs::index_records(
            shoal.logs.clone(),
            "shoal",
            events,
            "shoal_logs_self_dropped_total",
        ));
    }
    let (logs, acl) = (&shoal.logs, &shoal.acl);
    let max_bytes = shoal.settings.logs_max_body_bytes;
    let receivers = [
        (
            otlp_grpc,
            "otlp_grpc",
            otlp::grpc_router(logs.clone(), acl.clone(), max_bytes),
        ),
        (
            otlp_http,
            "otlp_http",
            otlp::http_router(logs.clone(), acl.clone(), max_bytes),
        ),
    ];
    for (listener, name, receiver) in receivers {
        let Some(listener) = listener else { continue };
        tracing::info!(addr = ?listener.local_addr().ok(), receiver = name, "OTLP receiver listening");
        tokio::spawn(api_server::serve(
            listener,
            name,
            receiver,
            ConnectionLimits::of(&shoal.settings),
            tls.clone(),
            stopped.clone(),
        ));
    }
}

type ApiServer = tokio::task::JoinHandle<()>;

/// Serve the public HTTP API until `stop` is notified.
fn serve_api(
    shoal: &Arc<Shoal>,
    api_listener: TcpListener,
    prometheus: PrometheusHandle,
    tls: Option<TlsAcceptor>,
    stopped: watch::Receiver<bool>,
) -> ApiServer {
    let app = routes::router(AppState {
        shoal: shoal.clone(),
        prometheus,
    });
    let settings = &shoal.settings;
    tracing::info!(api = %settings.api, tls = tls.is_some(), rpc = %settings.rpc, gossip = %settings.gossip,
        data_dir = %settings.data_dir.display(), startup_ms = shoal.started.elapsed().as_millis() as u64,
        "shoal node listening");
    tokio::spawn(api_server::serve(
        api_listener,
        "api",
        app,
        ConnectionLimits::of(settings),
        tls,
        stopped,
    ))
}

/// Wait until the node is to stop: its Raft core failed (returned), a
/// signal came (leaving the cluster first if configured), or it left.
async fn wait_for_stop(shoal: &Shoal) -> Option<String> {
    tokio::select! {
        fatal = raft_stopped(shoal.raft.clone()) => {
            // Without a working Raft core the node can only answer errors; exit
            // so that a supervisor restarts it and it rejoins from its data.
            tracing::error!(error = %fatal, "the Raft core stopped; exiting");
            Some(fatal)
        }
        _ = shutdown_signal() => {
            if shoal.settings.leave_on_terminate {
                tracing::info!("leaving the cluster before exiting");
                if let Err(e) = shoal.cluster.leave_this_node().await {
                    tracing::warn!(error = %e, "could not leave the cluster");
                }
            }
            None
        }
        _ = shoal.shutdown.notified() => {
            tracing::info!("this node left the cluster");
            None
        }
    }
}

/// Stop serving (open requests get a moment), then stop Raft.
async fn shut_down(
    raft: &Raft,
    server: ApiServer,
    stop: watch::Sender<bool>,
    raft_failure: Option<String>,
) -> anyhow::Result<()> {
    tracing::info!("shutting down");
    let _ = stop.send(true);
    // Open watch streams never finish on their own: give requests a moment, then stop.
    if tokio::time::timeout(SHUTDOWN_GRACE, server).await.is_err() {
        tracing::info!("closing remaining connections");
    }
    raft.shutdown()
        .await
        .map_err(|e| anyhow::anyhow!("raft shutdown: {e}"))?;
    match raft_failure {
        Some(fatal) => Err(anyhow::anyhow!("the Raft core stopped: {fatal}")),
        None => Ok(()),
    }
}

/// Resolves once the Raft core has stopped, with the reason. Polled: the
/// metrics change with every entry, and waking this (main-thread) future on
/// each change cost a context switch per write.
async fn raft_stopped(raft: Raft) -> String {
    let mut every = tokio::time::interval(RAFT_CHECK_EVERY);
    loop {
        every.tick().await;
        if let Err(fatal) = &raft.metrics().borrow().running_state {
            return fatal.to_string();
        }
    }
}

async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate => {}
    }
}

/// End catching up as soon as Raft's state allows it (see `CatchUp`): the
/// shorter a node stays in it, the smaller the window in which a crash of
/// every node at once would leave all of them refusing each other's votes.
async fn end_catch_up(raft: Raft, catch_up: Arc<CatchUp>) {
    let mut metrics = raft.metrics();
    while catch_up.active() {
        catch_up.update(&metrics.borrow().clone());
        if metrics.changed().await.is_err() {
            return;
        }
    }
}
