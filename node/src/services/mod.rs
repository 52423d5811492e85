//! The node's services: the shared state ([`shoal::Shoal`]) with replicated
//! writes, read barriers and store reads; watches; lease expiry; messaging
//! wired to the cluster; cluster-wide log search. Each reports failures as
//! its own typed error (`KvError`, the log engine's `SearchError`), never as
//! an HTTP answer: services must not depend on the HTTP layer (`api/`,
//! `compat/`), the CLI, or the wiring in `server.rs`.

pub mod compaction;
pub mod datasets;
pub mod evaluator;
pub mod instances;
pub mod lease_timers;
pub mod leases;
pub mod logs;
pub mod messaging;
pub mod reports;
pub mod shoal;
pub mod space;
pub mod sql_worker;
pub mod watch;
pub mod watch_hub;
pub mod workflow_events;
pub mod workflow_runner;
pub mod workflows;
