//! Leases: grant, revoke, inspect, and a background keeper that renews one.

use std::time::Duration;

use reqwest::Method;
use serde::Deserialize;
use serde_json::json;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::client::{Client, Request, Retry};
use crate::error::Result;

/// A granted lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct Lease {
    /// Lease id, for [`crate::PutOptions::lease`].
    pub id: u64,
    /// Time to live after the last grant or keepalive.
    pub ttl_seconds: u64,
}

/// A lease's state as the leader sees it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct LeaseInfo {
    /// Lease id.
    pub id: u64,
    /// Time to live after the last grant or keepalive.
    pub ttl_seconds: u64,
    /// Milliseconds left before it expires.
    pub remaining_ms: u64,
    /// Keys attached to it.
    #[serde(default)]
    pub keys: Vec<String>,
}

/// Answer to a revoke.
#[derive(Debug, Clone, Copy, Deserialize)]
pub struct RevokeResponse {
    /// The revision of the deletion of its keys.
    pub revision: u64,
    /// How many keys were deleted with it.
    pub deleted: u64,
}

#[derive(Deserialize)]
struct LeaseList {
    leases: Vec<LeaseInfo>,
}

/// What a [`LeaseKeeper`] knows about its lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseStatus {
    /// The last keepalive succeeded.
    Alive,
    /// The last keepalive failed for a reason that may pass (no endpoint
    /// reachable, no quorum); the keeper keeps trying.
    Retrying {
        /// The last error.
        error: String,
    },
    /// The lease is gone (expired or revoked); the keeper has stopped.
    Lost {
        /// Why.
        reason: String,
    },
}

/// Renews a lease every `ttl / 3` in a background task until dropped.
///
/// Dropping the keeper stops the renewals (the lease then expires after its
/// TTL); [`LeaseKeeper::revoke`] ends it at once. Loss is reported through
/// [`LeaseKeeper::status`].
#[derive(Debug)]
pub struct LeaseKeeper {
    lease: Lease,
    client: Client,
    status: watch::Receiver<LeaseStatus>,
    task: JoinHandle<()>,
}

impl LeaseKeeper {
    /// The lease being kept.
    pub fn lease(&self) -> Lease {
        self.lease
    }

    /// The lease id.
    pub fn id(&self) -> u64 {
        self.lease.id
    }

    /// A receiver of the keeper's status, updated after every keepalive.
    pub fn status(&self) -> watch::Receiver<LeaseStatus> {
        self.status.clone()
    }

    /// Waits until the lease is lost and returns why.
    pub async fn lost(&self) -> String {
        let mut status = self.status.clone();
        loop {
            if let LeaseStatus::Lost { reason } = &*status.borrow_and_update() {
                return reason.clone();
            }
            if status.changed().await.is_err() {
                return "the lease keeper stopped".into();
            }
        }
    }

    /// Stops renewing and revokes the lease (deleting its keys).
    pub async fn revoke(self) -> Result<RevokeResponse> {
        self.task.abort();
        self.client.lease_revoke(self.lease.id).await
    }
}

impl Drop for LeaseKeeper {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Pause after a failed keepalive before the next try.
const RETRY_PAUSE: Duration = Duration::from_millis(500);

impl Client {
    /// Grants a lease of `ttl_seconds` (1..=86400).
    pub async fn lease_grant(&self, ttl_seconds: u64) -> Result<Lease> {
        let request = Request::new(Method::POST, "/v1/leases".into(), Retry::Once)
            .json(&json!({ "ttl_seconds": ttl_seconds }));
        self.call_json(request, "lease grant answer").await
    }

    /// Renews a lease once (its TTL starts again). A lease that is gone is
    /// an error with code `lease_not_found`.
    pub async fn lease_keepalive(&self, id: u64) -> Result<Lease> {
        let request = Request::new(
            Method::POST,
            format!("/v1/leases/{id}/keepalive"),
            Retry::Idempotent,
        );
        self.call_json(request, "lease keepalive answer").await
    }

    /// Revokes a lease and deletes its keys.
    pub async fn lease_revoke(&self, id: u64) -> Result<RevokeResponse> {
        let request = Request::new(
            Method::DELETE,
            format!("/v1/leases/{id}"),
            Retry::Idempotent,
        );
        self.call_json(request, "lease revoke answer").await
    }

    /// A lease's remaining time and keys; `None` if it is gone.
    pub async fn lease_time_to_live(&self, id: u64) -> Result<Option<LeaseInfo>> {
        match self
            .call_json(Request::get(format!("/v1/leases/{id}")), "lease answer")
            .await
        {
            Ok(info) => Ok(Some(info)),
            Err(e) if e.code() == Some("lease_not_found") => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Every live lease.
    pub async fn lease_list(&self) -> Result<Vec<LeaseInfo>> {
        let list: LeaseList = self
            .call_json(Request::get("/v1/leases".into()), "lease list")
            .await?;
        Ok(list.leases)
    }

    /// Starts renewing `lease` every `ttl / 3` in a background task.
    pub fn lease_keep_alive(&self, lease: Lease) -> LeaseKeeper {
        let (sender, status) = watch::channel(LeaseStatus::Alive);
        let client = self.clone();
        let interval = Duration::from_millis((lease.ttl_seconds * 1000 / 3).max(100));
        let task = tokio::spawn(async move {
            let mut pause = interval;
            loop {
                tokio::time::sleep(pause).await;
                match client.lease_keepalive(lease.id).await {
                    Ok(_) => {
                        pause = interval;
                        sender.send_replace(LeaseStatus::Alive);
                    }
                    Err(e) if e.code() == Some("lease_not_found") => {
                        tracing::warn!(lease = lease.id, "lease lost: {e}");
                        sender.send_replace(LeaseStatus::Lost {
                            reason: e.to_string(),
                        });
                        return;
                    }
                    Err(e) => {
                        tracing::debug!(lease = lease.id, "keepalive failed, retrying: {e}");
                        pause = RETRY_PAUSE.min(interval);
                        sender.send_replace(LeaseStatus::Retrying {
                            error: e.to_string(),
                        });
                    }
                }
            }
        });
        LeaseKeeper {
            lease,
            client: self.clone(),
            status,
            task,
        }
    }

    /// Grants a lease and starts keeping it alive.
    pub async fn lease_grant_kept(&self, ttl_seconds: u64) -> Result<LeaseKeeper> {
        let lease = self.lease_grant(ttl_seconds).await?;
        Ok(self.lease_keep_alive(lease))
    }
}
