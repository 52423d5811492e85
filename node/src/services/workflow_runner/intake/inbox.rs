//! The intake's side of the workflow event inbox, on the leader: offering
//! waiting events (concurrently, in order per instance), tending them each
//! tick, and deleting those taken or past retention.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use futures::StreamExt;
use serde_json::Value;
use shoal_storage::now_ms;

use super::Intake;
use crate::services::workflow_events;

/// Most inbox events deleted in one write.
const DELETES_PER_WRITE: usize = 100;
/// Most inbox events offered at once.
const CONCURRENT_OFFERS: usize = 32;

pub(super) struct Inboxed {
    accepted_ms: u64,
    event: Arc<Value>,
    /// Taken in this term (deleted soon): not offered again.
    taken: bool,
}

impl Inboxed {
    pub(super) fn new(waiting: workflow_events::Waiting) -> Inboxed {
        Inboxed {
            accepted_ms: waiting.accepted_ms,
            event: Arc::new(waiting.event),
            taken: false,
        }
    }
}

/// Groups events (by position) into waves to offer one after the other:
/// an event goes in the wave after the last one holding an event with a
/// candidate instance in common, so each instance is offered its events
/// in the order they came, and events for different instances go together.
fn waves(candidates: &[Vec<String>]) -> Vec<Vec<usize>> {
    let mut waves: Vec<Vec<usize>> = Vec::new();
    let mut wave_of_instance: HashMap<&str, usize> = HashMap::new();
    for (n, ids) in candidates.iter().enumerate() {
        let wave = ids
            .iter()
            .filter_map(|id| wave_of_instance.get(id.as_str()))
            .max()
            .map_or(0, |w| w + 1);
        for id in ids {
            wave_of_instance.insert(id, wave);
        }
        if waves.len() <= wave {
            waves.resize_with(wave + 1, Vec::new);
        }
        waves[wave].push(n);
    }
    waves
}

impl Intake {
    /// Every waiting inbox event of this replica; the revision it was read at.
    pub(super) async fn load_inbox(&mut self) -> anyhow::Result<u64> {
        let (revision, all) = self.shoal.read(workflow_events::scan).await?;
        self.inbox = all
            .into_iter()
            .map(|(id, waiting)| (id, Inboxed::new(waiting)))
            .collect();
        self.gauge_inbox();
        Ok(revision)
    }

    pub(super) fn gauge_inbox(&self) {
        let waiting = self.inbox.len() as u64;
        self.shoal.waiting_events.store(waiting, Ordering::Relaxed);
        metrics::gauge!("shoal_workflow_inbox_waiting").set(waiting as f64);
    }

    /// On the leader, each tick: the whole inbox when it has just begun to
    /// lead (taken or not before), else the events whose offer failed;
    /// then the taken events and those past retention are deleted.
    pub(super) async fn tend_inbox(&mut self) {
        let leading = self.shoal.is_leader();
        let began = leading && !self.leading;
        self.leading = leading;
        if !leading {
            // The next leader offers everything again.
            self.retry.clear();
            self.taken.clear();
            return;
        }
        let again: Vec<String> = if began {
            self.taken.clear();
            for inboxed in self.inbox.values_mut() {
                inboxed.taken = false;
            }
            self.inbox.keys().cloned().collect()
        } else {
            std::mem::take(&mut self.retry).into_iter().collect()
        };
        self.offer_inbox(again).await;
        self.delete_taken().await;
        let retention = self.shoal.settings.workflow_event_retention.as_millis() as u64;
        let now = now_ms();
        let expired: Vec<String> = self
            .inbox
            .iter()
            .filter(|(_, e)| !e.taken && e.accepted_ms.saturating_add(retention) <= now)
            .map(|(id, _)| id.clone())
            .take(DELETES_PER_WRITE)
            .collect();
        if expired.is_empty() {
            return;
        }
        match workflow_events::delete(&self.shoal, &expired).await {
            Ok(()) => {
                metrics::counter!("shoal_workflow_inbox_events_total", "result" => "expired")
                    .increment(expired.len() as u64);
            }
            Err(e) => {
                tracing::warn!(error = %e, "deleting workflow inbox events past retention failed")
            }
        }
    }

    /// On the leader, the inbox events of these types (`""`: any) again.
    pub(super) async fn offer_inbox_of(&mut self, types: &BTreeSet<String>) {
        if !self.shoal.is_leader() {
            return;
        }
        let any = types.contains("");
        let ids: Vec<String> = self
            .inbox
            .iter()
            .filter(|(_, e)| {
                any || e
                    .event
                    .get("type")
                    .and_then(Value::as_str)
                    .is_some_and(|t| types.contains(t))
            })
            .map(|(id, _)| id.clone())
            .collect();
        self.offer_inbox(ids).await;
    }

    /// Offers these inbox events (on the leader) unless taken already. One
    /// an instance applied was deleted by that write; one taken otherwise
    /// (a duplicate, a schedule's start) with no failed offer is deleted
    /// later; a failed offer is tried again next tick.
    ///
    /// Up to [`CONCURRENT_OFFERS`] events are offered at once (each offer
    /// waits for the evaluator and a Raft write; one at a time, the inbox
    /// took fewer events a second than a topic), but never two that may go
    /// to the same instance: those are offered in the order they were
    /// accepted.
    pub(super) async fn offer_inbox(&mut self, ids: Vec<String>) {
        let mut waiting: Vec<(u64, String, Arc<Value>)> = ids
            .into_iter()
            .filter_map(|id| {
                let inboxed = self.inbox.get(&id).filter(|e| !e.taken)?;
                Some((inboxed.accepted_ms, id, inboxed.event.clone()))
            })
            .collect();
        // In the order they were accepted (a stable sort: arrivals keep
        // their commit order where the accepting nodes' clocks tie).
        waiting.sort_by_key(|(accepted_ms, _, _)| *accepted_ms);
        let events: Vec<(String, Arc<Value>)> = waiting
            .into_iter()
            .map(|(_, id, event)| (id, event))
            .collect();
        let this: &Intake = self;
        // Futures made in a loop, not by a closure: a closure's borrowed
        // arguments make the task's future fail to be Send.
        let mut lookups = Vec::with_capacity(events.len());
        for (_, event) in &events {
            let event = event.clone();
            lookups.push(async move { this.candidates(&event).await });
        }
        let candidates: Vec<Vec<String>> = futures::stream::iter(lookups)
            .buffered(CONCURRENT_OFFERS)
            .collect()
            .await;
        let mut outcomes = Vec::with_capacity(events.len());
        for wave in waves(&candidates) {
            let mut offers = Vec::with_capacity(wave.len());
            for n in wave {
                let (id, event) = events[n].clone();
                let candidates = candidates[n].clone();
                offers.push(async move {
                    let offered = this.offer_to(&event, &candidates, Some(&id)).await;
                    (n, offered)
                });
            }
            outcomes.extend(
                futures::stream::iter(offers)
                    .buffer_unordered(CONCURRENT_OFFERS)
                    .collect::<Vec<_>>()
                    .await,
            );
        }
        for (n, offered) in outcomes {
            let id = &events[n].0;
            let taken = offered.deleted || (offered.taken && !offered.failed);
            if taken {
                if let Some(inboxed) = self.inbox.get_mut(id) {
                    inboxed.taken = true;
                }
            }
            if offered.deleted {
                metrics::counter!("shoal_workflow_inbox_events_total", "result" => "taken")
                    .increment(1);
            } else if taken {
                self.taken.push(id.clone());
            } else if offered.failed {
                self.retry.insert(id.clone());
            }
        }
        if self.taken.len() >= DELETES_PER_WRITE {
            self.delete_taken().await;
        }
    }

    /// Deletes the taken events, up to [`DELETES_PER_WRITE`] a write; those
    /// not deleted stay marked and are tried again next tick.
    async fn delete_taken(&mut self) {
        while !self.taken.is_empty() {
            let count = self.taken.len().min(DELETES_PER_WRITE);
            let ids: Vec<String> = self.taken[..count].to_vec();
            if let Err(e) = workflow_events::delete(&self.shoal, &ids).await {
                tracing::debug!(error = %e, "deleting taken workflow inbox events failed");
                return;
            }
            metrics::counter!("shoal_workflow_inbox_events_total", "result" => "taken")
                .increment(count as u64);
            self.taken.drain(..count);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::waves;

    fn ids(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    #[test]
    fn events_for_one_instance_go_in_order_and_others_together() {
        let candidates = vec![
            ids(&["a"]),
            ids(&["b"]),
            ids(&["a", "c"]),
            ids(&[]),
            ids(&["c"]),
            ids(&["d"]),
        ];
        assert_eq!(waves(&candidates), vec![vec![0, 1, 3, 5], vec![2], vec![4]]);
    }
}
