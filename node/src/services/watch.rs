//! A watcher: every change to the keys it watches, from a start revision,
//! in order, exactly once.
//!
//! A watcher first registers with the hub, then reads the stored history
//! from its start revision, then takes live batches, skipping any it has
//! already read. Registering before reading closes the gap between the two;
//! the revision check removes the overlap; so every change is delivered once,
//! in order. If the hub drops a slow watcher, it reads history again from
//! where it stopped.

use std::sync::Arc;
use std::time::Duration;

use shoal_storage::kv::Changes;

use super::shoal::{KvError, KvResult, Shoal};
use super::watch_hub::{Filter, Registration, SharedBatch};

/// Revisions scanned per history read, to bound the work of one read.
const HISTORY_SCAN: usize = 10_000;

pub struct Watcher {
    shoal: Arc<Shoal>,
    filter: Filter,
    /// The next revision to deliver.
    next: u64,
    max_batches: usize,
    registration: Option<Registration>,
    /// Stored history may hold matching changes not yet delivered.
    behind: bool,
    /// The history read under way, kept across calls: loops await
    /// `next_batches` in `select!` and drop it when another branch fires,
    /// and a read on the blocking pool cannot be stopped, so the next call
    /// takes up the same read instead of starting another (else a scan
    /// longer than the loop's tick would never finish, and each abandoned
    /// one would hold a read permit until its end). With the revision it
    /// reads from.
    reading: Option<(u64, tokio::task::JoinHandle<KvResult<Changes>>)>,
}

impl Drop for Watcher {
    /// A read nobody will take stops waiting for its permit (one already on
    /// the blocking pool runs to its end, holding its permit).
    fn drop(&mut self) {
        if let Some((_, reading)) = &self.reading {
            reading.abort();
        }
    }
}

impl Watcher {
    /// A watcher from `from` (default: only changes after now); fails with
    /// `compacted` if `from` is older than the retained history. "Now" is
    /// the cluster's revision (read-index, as for a linearizable read), not
    /// this node's possibly lagging one, unless `stale` is asked for.
    pub async fn start(
        shoal: Arc<Shoal>,
        filter: Filter,
        from: Option<u64>,
        stale: bool,
        max_batches: usize,
    ) -> KvResult<Watcher> {
        if from.is_none() {
            shoal.read_barrier(stale).await?;
        }
        let counters = shoal.read(|store| store.counters()).await?;
        let next = from.unwrap_or(counters.revision + 1);
        if next < counters.compact_revision {
            return Err(KvError::HistoryCompacted {
                from: next,
                compact_revision: counters.compact_revision,
            });
        }
        Ok(Watcher {
            shoal,
            filter,
            next,
            max_batches,
            registration: None,
            behind: true,
            reading: None,
        })
    }

    pub fn next_revision(&self) -> u64 {
        self.next
    }

    /// The next batches in order: at least one, or none if `wait` elapsed.
    pub async fn next_batches(
        &mut self,
        wait: Option<Duration>,
    ) -> KvResult<Vec<Arc<SharedBatch>>> {
        let deadline = wait.map(|wait| tokio::time::Instant::now() + wait);
        loop {
            if self.registration.is_none() {
                self.registration = Some(self.shoal.hub.register(self.filter.clone()));
                self.behind = true;
            }
            if self.behind {
                let (from, reading) = self.reading.get_or_insert_with(|| {
                    let (next, max) = (self.next, self.max_batches);
                    let (shoal, filter) = (self.shoal.clone(), self.filter.clone());
                    let reading = tokio::spawn(async move {
                        shoal
                            .read(move |store| {
                                store.kv_changes(
                                    next,
                                    &|key| filter.matches(key),
                                    max,
                                    HISTORY_SCAN,
                                )
                            })
                            .await
                    });
                    (next, reading)
                });
                let from = *from;
                let read = reading.await;
                self.reading = None;
                let changes =
                    read.map_err(|e| KvError::Internal(format!("history read task: {e}")))??;
                if from < changes.counters.compact_revision {
                    return Err(KvError::HistoryCompacted {
                        from,
                        compact_revision: changes.counters.compact_revision,
                    });
                }
                self.next = changes.next_revision;
                self.behind = changes.next_revision <= changes.counters.revision;
                if !changes.batches.is_empty() {
                    return Ok(changes.batches.into_iter().map(SharedBatch::new).collect());
                }
                continue;
            }
            let Some(registration) = self.registration.as_mut() else {
                continue;
            };
            let received = match deadline {
                None => registration.receiver.recv().await,
                Some(deadline) => {
                    match tokio::time::timeout_at(deadline, registration.receiver.recv()).await {
                        Ok(received) => received,
                        Err(_) => return Ok(Vec::new()),
                    }
                }
            };
            match received {
                // The hub dropped us (we were slow, or the state was replaced).
                None => self.registration = None,
                Some(shared) if shared.batch.revision < self.next => {}
                Some(batch) => {
                    self.next = batch.batch.revision + 1;
                    if let Some(selected) = self.filter.select(&batch) {
                        return Ok(vec![selected]);
                    }
                }
            }
        }
    }
}
