//! Helpers shared by the tests.

use std::future::Future;
use std::time::Duration;

use shoal_client::Client;
use shoal_testkit::NodeProcess;

/// A ready `shoal dev` node.
pub async fn dev_node() -> NodeProcess {
    NodeProcess::dev().await.expect("start a shoal dev node")
}

/// A client for these nodes, in this order.
pub fn client_for<'a>(nodes: impl IntoIterator<Item = &'a NodeProcess>) -> Client {
    Client::builder()
        .endpoints(nodes.into_iter().map(NodeProcess::api_url))
        .timeout(Duration::from_secs(15))
        .connect_timeout(Duration::from_millis(500))
        .build()
        .expect("build the client")
}

pub use shoal_testkit::eventually;

/// Awaits `future`, panicking with `what` after `timeout`.
pub async fn within<T>(timeout: Duration, what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(timeout, future)
        .await
        .unwrap_or_else(|_| panic!("timed out after {timeout:?}: {what}"))
}
