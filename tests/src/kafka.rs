//! A Kafka-protocol broker (tansu) started per test, and Kafka helpers.
