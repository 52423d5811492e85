//! The node's own logs roll by size with a cap on files kept, and traces are
//! exported over OTLP when an endpoint is configured.

use std::time::Duration;

use shoal_tests::*;
use tokio::io::AsyncReadExt;

#[tokio::test(flavor = "multi_thread")]
async fn own_logs_roll_by_size_and_keep_a_bounded_number_of_files() {
    // Debug logging is verbose enough to fill 1 MiB files quickly.
    let node = Node::builder()
        .args(&[
            "--log-level",
            "debug",
            "--log-max-file-mb",
            "1",
            "--log-max-files",
            "2",
        ])
        .start()
        .await;
    let logs = node.data_dir().join("logs");
    let list = || -> Vec<(String, u64)> {
        std::fs::read_dir(&logs)
            .expect("log dir exists")
            .filter_map(|entry| entry.ok())
            .map(|entry| {
                let size = entry.metadata().map(|m| m.len()).unwrap_or(0);
                (entry.file_name().to_string_lossy().into_owned(), size)
            })
            .collect()
    };
    let mut written = 0;
    eventually(Duration::from_secs(60), "the log to roll twice", || {
        let files = list();
        let node = &node;
        let batch = written;
        written += 50;
        async move {
            if files.iter().any(|(name, _)| name == "shoal.log.2") {
                return Some(());
            }
            for i in batch..batch + 50 {
                node.put(&format!("roll/{i}"), &[b'x'; 100]).await;
            }
            None
        }
    })
    .await;
    // Let the non-blocking writer flush, then check the cap and sizes.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let files = list();
    assert!(
        files.iter().any(|(name, _)| name == "shoal.log"),
        "{files:?}"
    );
    assert!(
        files.len() <= 3,
        "at most 2 rolled files + the current one: {files:?}"
    );
    for (name, size) in &files {
        assert!(
            *size <= (1 << 20) + (64 << 10),
            "{name} is {size} bytes, over the 1 MiB roll size"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn traces_are_exported_over_otlp_grpc_when_configured() {
    // A TCP listener standing in for a collector: an OTLP/gRPC export opens
    // an HTTP/2 connection, which starts with the client preface.
    let collector = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let endpoint = format!("http://{}", collector.local_addr().expect("addr"));
    let node = Node::builder()
        .args(&["--otlp-endpoint", &endpoint])
        .env("OTEL_BSP_SCHEDULE_DELAY", "200")
        .start()
        .await;
    for i in 0..20 {
        node.put(&format!("traced/{i}"), b"v").await;
    }
    let (mut conn, _) = tokio::time::timeout(Duration::from_secs(20), collector.accept())
        .await
        .expect("the node connected to the OTLP endpoint within 20 s")
        .expect("accept");
    let mut preface = [0u8; 24];
    tokio::time::timeout(Duration::from_secs(10), conn.read_exact(&mut preface))
        .await
        .expect("preface within 10 s")
        .expect("read preface");
    assert_eq!(
        &preface, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        "an HTTP/2 (gRPC) client preface"
    );
}
