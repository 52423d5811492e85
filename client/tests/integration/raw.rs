//! Behaviour that needs no Shoal node: a bare HTTP server on a local port
//! answers every request the same way and counts the requests it gets.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use shoal_client::{Client, Error, Txn, TxnOp};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Serves `answer` (raw bytes, then closes the connection) to every request;
/// returns the endpoint and the request counter.
async fn fixed_server(answer: &'static [u8]) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let endpoint = format!("http://{}", listener.local_addr().expect("address"));
    let count = Arc::new(AtomicUsize::new(0));
    let seen = count.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            let seen = seen.clone();
            tokio::spawn(async move {
                // Read until the end of the headers and the (small) body.
                let mut request = Vec::new();
                let mut buf = [0u8; 4096];
                loop {
                    let Ok(n) = socket.read(&mut buf).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    request.extend_from_slice(&buf[..n]);
                    if complete(&request) {
                        break;
                    }
                }
                seen.fetch_add(1, Ordering::SeqCst);
                let _ = socket.write_all(answer).await;
                let _ = socket.shutdown().await;
            });
        }
    });
    (endpoint, count)
}

/// Whether `request` holds the headers and `Content-Length` bytes of body.
fn complete(request: &[u8]) -> bool {
    let text = String::from_utf8_lossy(request);
    let Some(end) = text.find("\r\n\r\n") else {
        return false;
    };
    let length = text[..end]
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse::<usize>().ok())
                .flatten()
        })
        .unwrap_or(0);
    request.len() >= end + 4 + length
}

fn single(endpoint: &str) -> Client {
    Client::builder()
        .endpoint(endpoint)
        .timeout(Duration::from_secs(5))
        .build()
        .expect("build the client")
}

#[tokio::test]
async fn a_single_endpoint_client_sends_each_request_once() {
    let (endpoint, count) = fixed_server(
        b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: 54\r\nconnection: close\r\n\r\n{\"error\":{\"code\":\"unavailable\",\"message\":\"no quorum\"}}",
    )
    .await;
    let client = single(&endpoint);
    // Idempotent requests (get, put) and one-shot ones (txn) alike.
    let error = client.get("k").await.expect_err("503");
    assert_eq!(error.status(), Some(503), "{error}");
    let error = client.put("k", "v").await.expect_err("503");
    assert_eq!(error.code(), Some("unavailable"), "{error}");
    let txn = Txn::new().and_then([TxnOp::put("k", "v")]);
    let error = client.txn(&txn).await.expect_err("503");
    assert_eq!(error.status(), Some(503), "{error}");
    assert_eq!(count.load(Ordering::SeqCst), 3, "one request per call");
}

#[tokio::test]
async fn an_error_status_with_a_broken_body_keeps_its_status() {
    // Promises 200 bytes of body, sends 20, closes.
    let (endpoint, count) = fixed_server(
        b"HTTP/1.1 409 Conflict\r\ncontent-type: application/json\r\ncontent-length: 200\r\n\r\n{\"error\":{\"code\":\"co",
    )
    .await;
    let client = single(&endpoint);
    let error = client.put("k", "v").await.expect_err("409");
    match &error {
        Error::Api { status, code, .. } => {
            assert_eq!((*status, code.as_str()), (409, "http_409"), "{error}")
        }
        other => panic!("expected an Api error, got {other:?}"),
    }
    assert!(!error.is_retryable(), "a 4xx is a refusal: {error}");
    assert_eq!(count.load(Ordering::SeqCst), 1);
}
