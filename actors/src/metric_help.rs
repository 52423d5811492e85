//! Help text and units of the metrics this crate records.

use metrics::{describe_counter, describe_gauge, Unit};

/// Register the help text of this crate's metrics with the installed recorder.
pub fn describe_metrics() {
    describe_counter!(
        "shoal_messages_published_total",
        Unit::Count,
        "Messages published on this node, by topic."
    );
    describe_counter!(
        "shoal_messages_delivered_total",
        Unit::Count,
        "Messages handed to local subscribers, by topic."
    );
    describe_counter!(
        "shoal_messages_dropped_total",
        Unit::Count,
        "Messages dropped because a subscriber's buffer was full, by topic."
    );
    describe_counter!(
        "shoal_peer_link_dropped_total",
        Unit::Count,
        "Messages to a peer node dropped (the oldest queued) because its link queue was full."
    );
    describe_counter!(
        "shoal_subscribers_cut_off_total",
        Unit::Count,
        "Subscribers disconnected because the node's subscriber buffers were full (--subscriber-buffer-mb) while they were behind."
    );
    describe_gauge!(
        "shoal_subscriber_buffer_bytes",
        Unit::Bytes,
        "Bytes of messages held for this node's subscribers (a message in several buffers counted once, until its last subscriber has sent it), sampled at scrape."
    );
    describe_gauge!(
        "shoal_subscribers",
        Unit::Count,
        "Subscriptions (SSE, WebSocket, webhooks, bridges) on this node's router."
    );
    describe_gauge!(
        "shoal_outbox_pending",
        Unit::Count,
        "Messages waiting in this node's outbox for a destination (a webhook, Kafka topic, SQL sink or the workflow event inbox): the delivery lag, sampled at scrape."
    );
    describe_counter!(
        "shoal_deliveries_total",
        Unit::Count,
        "Deliveries from the outbox (webhooks, Kafka, SQL sinks, the workflow event inbox) that succeeded, by destination and topic."
    );
    describe_counter!(
        "shoal_deliveries_retried_total",
        Unit::Count,
        "Delivery attempts that failed and were scheduled again, by destination and topic."
    );
    describe_counter!(
        "shoal_deliveries_dead_lettered_total",
        Unit::Count,
        "Deliveries given up after their last attempt and kept as dead letters, by destination and topic."
    );
    describe_counter!(
        "shoal_kafka_produced_total",
        Unit::Count,
        "Messages produced to Kafka."
    );
    describe_counter!(
        "shoal_kafka_consumed_total",
        Unit::Count,
        "Messages consumed from Kafka by bridges."
    );
}
