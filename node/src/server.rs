//! Starting a node: storage, Raft, listeners, background duties, shutdown.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::serve::ListenerExt;
use openraft::{Config, SnapshotPolicy};
use shoal_actors::kafka::KafkaClient;
use shoal_actors::Messaging;
use shoal_raft::{
    serve_rpc, CatchUp, ClusterKey, Forwarder, Linearizer, LogStore, MessageInbox, NodeAddr,
    PeerServices, Raft, RemoveHandler, RpcNetwork, StateMachine,
};
use shoal_search::{Limits, Logs, LogsConfig, Retention};
use shoal_storage::kv::Command;
use shoal_storage::outbox::Outbox;
use shoal_storage::{OpenOptions, Store, StoreClosed};
use tokio::net::TcpListener;
use tokio::sync::Notify;

use crate::api::{self, AppState};
use crate::cluster::{self, Gossip};
use crate::faults::Faults;
use crate::leases;
use crate::logs;
use crate::messaging::{self, RpcTransport};
use crate::otlp;
use crate::service::{propose_batches, Shoal, PROPOSAL_QUEUE};
use crate::settings::{self, Settings};
use crate::telemetry;
use crate::watch::WatchHub;

/// How long open requests get to finish at shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);
/// How often the node checks whether its Raft core has stopped.
const RAFT_CHECK_EVERY: Duration = Duration::from_millis(250);
/// Memory of one log partition's index writer (Tantivy's minimum is 15 MB).
const LOG_WRITER_BYTES: usize = 64 << 20;
/// How often the leader considers compacting history.
const COMPACT_CHECK: Duration = Duration::from_secs(5);

/// Run a node until it is stopped. `store_closed` receives a handle on the
/// node's database, for the caller to wait, once the async runtime is gone,
/// until the database is closed before the process exits.
pub async fn run(settings: Settings, store_closed: &mut Option<StoreClosed>) -> anyhow::Result<()> {
    std::fs::create_dir_all(&settings.data_dir)
        .with_context(|| format!("creating data dir {}", settings.data_dir.display()))?;
    let mut telemetry = telemetry::init_node(&settings)?;
    let prometheus = telemetry::init_metrics()?;
    let started = Instant::now();
    let identity = settings::node_id(&settings)?;
    let node_id = identity.id;

    // Bind first: a port in use is the most common start-up failure.
    let api_listener = TcpListener::bind(settings.api)
        .await
        .with_context(|| format!("binding the API address {}", settings.api))?;
    let rpc_listener = TcpListener::bind(settings.rpc)
        .await
        .with_context(|| format!("binding the RPC address {}", settings.rpc))?;
    let otlp_grpc_listener = otlp::bind(settings.otlp_grpc, "OTLP/gRPC").await?;
    let otlp_http_listener = otlp::bind(settings.otlp_http, "OTLP/HTTP").await?;

    let faults = Faults::from_env();
    let db_path = settings.data_dir.join("db");
    let open_options = OpenOptions {
        lose_unsynced_writes: faults.lose_unsynced_writes,
    };
    let store = tokio::task::spawn_blocking(move || Store::open_with(&db_path, open_options))
        .await?
        .with_context(|| format!("opening the database in {}", settings.data_dir.display()))?;
    *store_closed = Some(store.closed());
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
        },
    };
    let logs = tokio::task::spawn_blocking(move || Logs::open(logs_config))
        .await?
        .with_context(|| {
            format!(
                "opening the log indexes in {}",
                settings.data_dir.join("search").display()
            )
        })?;
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
    let may_have_voted = raft_state_empty && !identity.generated;
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
    .context("creating the snapshot directory")?;
    let config = Config {
        cluster_name: "shoal".into(),
        heartbeat_interval: settings.election_timeout_ms / 5,
        election_timeout_min: settings.election_timeout_ms,
        election_timeout_max: settings.election_timeout_ms * 2,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(settings.snapshot_every),
        max_in_snapshot_log_to_keep: settings.snapshot_every.min(1000),
        ..Default::default()
    }
    .validate()
    .context("raft configuration")?;
    let key = ClusterKey::new(settings.cluster_secret.as_deref());
    let raft = Raft::new(
        node_id,
        Arc::new(config),
        RpcNetwork::new(key.clone()),
        log_store,
        state_machine,
    )
    .await
    .context("starting raft")?;
    let gossip = Gossip::start(&settings, node_id).await?;
    let linearizer = Linearizer::new(raft.clone());
    let (proposals, proposal_queue) = tokio::sync::mpsc::channel(PROPOSAL_QUEUE);
    let outbox_store = store.clone();
    let outbox = tokio::task::spawn_blocking(move || Outbox::open(outbox_store))
        .await?
        .context("opening the outbox")?;
    let kafka = match &settings.kafka_brokers {
        Some(brokers) => Some(KafkaClient::new(brokers).context("creating the Kafka client")?),
        None => None,
    };
    let transport = RpcTransport::new(Forwarder::new(key.clone()));
    let messaging = Messaging::new(node_id, outbox, transport.clone(), kafka);
    let inbox: MessageInbox = {
        let router = messaging.router.clone();
        Arc::new(move |frame: &[u8]| router.receive_frame(frame).map_err(|e| e.to_string()))
    };
    let removals = Arc::new(cluster::Removals::default());
    let remove_node: RemoveHandler = {
        let (raft, removals) = (raft.clone(), removals.clone());
        Arc::new(move |id| {
            let (raft, removals) = (raft.clone(), removals.clone());
            Box::pin(async move { cluster::remove_member(&raft, &removals, id).await })
        })
    };
    let peer_services = PeerServices {
        catch_up: catch_up.clone(),
        messages: inbox,
        search: logs::peer_handler(logs.clone()),
        remove_node,
    };

    let shoal = Arc::new(Shoal {
        node_id,
        settings: settings.clone(),
        raft: raft.clone(),
        store,
        hub,
        committed_index,
        started,
        gossip,
        forwarder: Forwarder::new(key.clone()),
        linearizer: linearizer.clone(),
        proposals,
        shutdown: Notify::new(),
        messaging: messaging.clone(),
        logs: logs.clone(),
        removals,
        lease_timers: Arc::default(),
        catch_up,
    });
    tokio::spawn(end_catch_up(raft.clone(), shoal.catch_up.clone()));
    tokio::spawn(serve_rpc(
        rpc_listener,
        raft.clone(),
        linearizer,
        key,
        peer_services,
    ));
    tokio::spawn(propose_batches(shoal.clone(), proposal_queue));

    if !raft.is_initialized().await.context("reading raft state")? {
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
                raft.initialize(BTreeMap::from([(node_id, me)]))
                    .await
                    .context("initialising raft")?;
            }
            expect => {
                tokio::spawn(cluster::form_cluster(shoal.clone(), expect));
            }
        }
    }
    tokio::spawn(cluster::publish_state(shoal.clone()));
    tokio::spawn(cluster::reconcile_membership(shoal.clone()));
    tokio::spawn(leases::run(shoal.clone()));
    tokio::spawn(compact_history(shoal.clone()));
    tokio::spawn(messaging::sync_interest(shoal.clone(), transport));
    // The configuration first: deliverers and publishes look webhooks and
    // routing rules up in it.
    let config_revision = messaging::load_config(&shoal).await;
    tokio::spawn(messaging::follow_config(shoal.clone(), config_revision));
    messaging.resume_deliveries().await;

    if let Some(events) = telemetry.own_logs.take() {
        tokio::spawn(logs::index_own_logs(shoal.logs.clone(), events));
    }
    if let Some(listener) = otlp_grpc_listener {
        tracing::info!(addr = ?listener.local_addr().ok(), "OTLP/gRPC receiver listening");
        tokio::spawn(otlp::serve_grpc(
            listener,
            shoal.logs.clone(),
            settings.logs_max_body_bytes,
        ));
    }
    if let Some(listener) = otlp_http_listener {
        tracing::info!(addr = ?listener.local_addr().ok(), "OTLP/HTTP receiver listening");
        let (logs, settings) = (shoal.logs.clone(), settings.clone());
        tokio::spawn(async move { otlp::serve_http(listener, logs, &settings).await });
    }
    let app = api::router(AppState {
        shoal: shoal.clone(),
        prometheus,
    });
    tracing::info!(api = %settings.api, rpc = %settings.rpc, gossip = %settings.gossip,
        data_dir = %settings.data_dir.display(), startup_ms = started.elapsed().as_millis() as u64,
        "shoal node listening");
    let stop = Arc::new(Notify::new());
    let server = {
        let stop = stop.clone();
        tokio::spawn(async move {
            // No Nagle delay: stream frames (SSE, WebSocket) go out as soon as they are written.
            let api_listener = api_listener.tap_io(|tcp| {
                let _ = tcp.set_nodelay(true);
            });
            axum::serve(api_listener, app)
                .with_graceful_shutdown(async move { stop.notified().await })
                .await
        })
    };
    let mut raft_failure = None;
    tokio::select! {
        fatal = raft_stopped(raft.clone()) => {
            // Without a working Raft core the node can only answer errors; exit
            // so that a supervisor restarts it and it rejoins from its data.
            tracing::error!(error = %fatal, "the Raft core stopped; exiting");
            raft_failure = Some(fatal);
        }
        _ = shutdown_signal() => {
            if settings.leave_on_terminate {
                tracing::info!("leaving the cluster before exiting");
                if let Err(e) = api::leave_this_node(&shoal).await {
                    tracing::warn!(error = %e.message, "could not leave the cluster");
                }
            }
        }
        _ = shoal.shutdown.notified() => tracing::info!("this node left the cluster"),
    }
    tracing::info!("shutting down");
    stop.notify_one();
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

/// On the leader: keep the last `history_revisions` revisions of history.
/// Compacts in steps of a tenth of the window so it is not a write per tick.
async fn compact_history(shoal: Arc<Shoal>) {
    let keep = shoal.settings.history_revisions;
    let step = (keep / 10).max(1);
    let mut tick = tokio::time::interval(COMPACT_CHECK);
    loop {
        tick.tick().await;
        if !shoal.is_leader() {
            continue;
        }
        let Ok(counters) = shoal.read(|store| store.counters()).await else {
            continue;
        };
        let target = (counters.revision + 1).saturating_sub(keep);
        if target >= counters.compact_revision + step {
            if let Err(e) = shoal.write(Command::Compact { revision: target }).await {
                tracing::warn!(error = %e.message, "compaction not applied; will retry");
            }
        }
    }
}
