//! Write load: concurrent writers of new keys that record every write a
//! node acknowledged, for checking later that none was lost.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use shoal_client::Client;
use tokio::task::JoinHandle;

use crate::wait_for;

/// Client time limit of one write.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause of a writer after a write that was not acknowledged.
const BACKOFF: Duration = Duration::from_millis(20);

/// One acknowledged `PUT`: the key (never written before), its value and
/// the revision of the reply (the key's `mod_revision`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Acked {
    pub key: String,
    pub value: Vec<u8>,
    pub revision: u64,
}

/// Concurrent writers; see [`Load::start`]. Dropping it stops the writers
/// without waiting for them.
pub struct Load {
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<Acked>>>,
    failures: Arc<AtomicU64>,
    tasks: Vec<JoinHandle<()>>,
}

impl Load {
    /// Starts `writers` tasks. Writer `w` puts the keys
    /// `{prefix}{w:02}/{n:07}` (value: the key) one after the other, attempt
    /// `n` going to `endpoints[(w + n) % len]` (an API base URL such as
    /// [`crate::Node::endpoint`]). A key is never retried: a write without a
    /// 200 leaves its key's fate unknown, and the writer goes on with the
    /// next key after a short pause. Only 200 replies are recorded.
    pub fn start(endpoints: Vec<String>, writers: usize, prefix: &str) -> Load {
        assert!(!endpoints.is_empty(), "Load::start: no endpoints");
        // One client per endpoint, each with that endpoint only: a write goes
        // to the node it is meant for, once.
        let clients: Vec<Client> = endpoints
            .iter()
            .map(|endpoint| {
                Client::builder()
                    .endpoint(endpoint.as_str())
                    .timeout(WRITE_TIMEOUT)
                    .connect_timeout(Duration::from_secs(1))
                    .build()
                    .unwrap_or_else(|e| panic!("cannot build a client for {endpoint}: {e}"))
            })
            .collect();
        let stop = Arc::new(AtomicBool::new(false));
        let acked: Arc<Mutex<Vec<Acked>>> = Arc::default();
        let failures = Arc::new(AtomicU64::new(0));
        let tasks = (0..writers)
            .map(|w| {
                let (clients, stop) = (clients.clone(), stop.clone());
                let (acked, failures) = (acked.clone(), failures.clone());
                let prefix = prefix.to_string();
                tokio::spawn(async move {
                    let mut n = 0usize;
                    while !stop.load(Ordering::Relaxed) {
                        let key = format!("{prefix}{w:02}/{n:07}");
                        let client = &clients[(w + n) % clients.len()];
                        n += 1;
                        // Any error (including a reply that broke off) leaves
                        // the outcome unknown.
                        match client.put(&key, key.clone()).await {
                            Ok(answer) => {
                                let value = key.clone().into_bytes();
                                acked.lock().unwrap_or_else(|e| e.into_inner()).push(Acked {
                                    key,
                                    value,
                                    revision: answer.revision,
                                });
                            }
                            Err(_) => {
                                failures.fetch_add(1, Ordering::Relaxed);
                                tokio::time::sleep(BACKOFF).await;
                            }
                        }
                    }
                })
            })
            .collect();
        Load {
            stop,
            acked,
            failures,
            tasks,
        }
    }

    /// How many writes have been acknowledged so far.
    pub fn acked_count(&self) -> usize {
        self.acked.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// How many writes were not acknowledged so far.
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    /// Waits (at most `timeout`) until `more` further writes are
    /// acknowledged; returns the new count.
    pub async fn wait_progress(&self, more: usize, timeout: Duration) -> usize {
        let from = self.acked_count();
        wait_for(
            timeout,
            &format!("{more} more acknowledged writes (from {from})"),
            || async {
                let now = self.acked_count();
                if now >= from + more {
                    Ok(now)
                } else {
                    Err(format!(
                        "{now} acknowledged, {} failed attempts",
                        self.failures()
                    ))
                }
            },
        )
        .await
    }

    /// Tells the writers to stop after their current write, without waiting.
    pub fn signal_stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    /// Stops the writers, waits for their last writes to end, and returns
    /// every acknowledged write.
    pub async fn stop(mut self) -> Vec<Acked> {
        self.signal_stop();
        for task in self.tasks.drain(..) {
            task.await.expect("a writer task failed");
        }
        std::mem::take(&mut *self.acked.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Compares a node's keys (key -> (value, mod_revision), as from
/// [`crate::Cluster::stale_kvs`]) with the acknowledged writes: `Err` names
/// those that are missing, or have another value or revision.
pub fn check_acked(kvs: &BTreeMap<String, (Vec<u8>, u64)>, acked: &[Acked]) -> Result<(), String> {
    let mut missing = Vec::new();
    let mut different = Vec::new();
    for write in acked {
        match kvs.get(&write.key) {
            None => missing.push(format!(
                "{} (acknowledged at revision {})",
                write.key, write.revision
            )),
            Some((value, revision)) if *value != write.value || *revision != write.revision => {
                different.push(format!(
                    "{}: acknowledged at revision {}, found at revision {} with value {:?}",
                    write.key,
                    write.revision,
                    revision,
                    String::from_utf8_lossy(value)
                ));
            }
            Some(_) => {}
        }
    }
    if missing.is_empty() && different.is_empty() {
        return Ok(());
    }
    Err(format!(
        "{} of {} acknowledged writes missing, e.g. {:?}; {} at another revision or value, e.g. {:?}; the node holds {} keys",
        missing.len(),
        acked.len(),
        &missing[..missing.len().min(5)],
        different.len(),
        &different[..different.len().min(5)],
        kvs.len()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acked(key: &str, revision: u64) -> Acked {
        Acked {
            key: key.to_string(),
            value: key.as_bytes().to_vec(),
            revision,
        }
    }

    #[test]
    fn check_acked_names_missing_and_different_writes() {
        let writes = vec![acked("a", 1), acked("b", 2), acked("c", 3)];
        let mut kvs: BTreeMap<String, (Vec<u8>, u64)> = writes
            .iter()
            .map(|w| (w.key.clone(), (w.value.clone(), w.revision)))
            .collect();
        kvs.insert("unacknowledged".to_string(), (b"x".to_vec(), 4));
        assert_eq!(check_acked(&kvs, &writes), Ok(()));

        kvs.remove("a");
        kvs.insert("b".to_string(), (b"b".to_vec(), 7));
        kvs.insert("c".to_string(), (b"other".to_vec(), 3));
        let problem = check_acked(&kvs, &writes).unwrap_err();
        assert!(
            problem.starts_with("1 of 3 acknowledged writes missing"),
            "{problem}"
        );
        assert!(
            problem.contains("a (acknowledged at revision 1)"),
            "{problem}"
        );
        assert!(
            problem.contains("2 at another revision or value"),
            "{problem}"
        );
        assert!(
            problem.contains("b: acknowledged at revision 2, found at revision 7"),
            "{problem}"
        );
    }
}
