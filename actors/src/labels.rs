//! Topic names as metric label values. Every label value is a time series
//! kept for the life of the process, and topics are named by clients: a
//! client that publishes to a new topic per message would grow the metrics
//! without end. The first [`MAX_TOPIC_LABELS`] topics a node sees keep
//! their own label; the rest are counted under [`OTHER_TOPICS`].

use std::collections::HashSet;
use std::sync::{LazyLock, Mutex};

/// Most distinct topic label values on one node.
pub const MAX_TOPIC_LABELS: usize = 1000;
/// The label value of topics past the cap.
pub const OTHER_TOPICS: &str = "_other";

static LABELLED: LazyLock<Mutex<HashSet<String>>> = LazyLock::new(Mutex::default);

/// The label value to count `topic` under.
pub fn topic_label(topic: &str) -> String {
    let mut labelled = LABELLED.lock().unwrap_or_else(|p| p.into_inner());
    if labelled.contains(topic) {
        return topic.to_string();
    }
    if labelled.len() < MAX_TOPIC_LABELS {
        labelled.insert(topic.to_string());
        return topic.to_string();
    }
    OTHER_TOPICS.to_string()
}
