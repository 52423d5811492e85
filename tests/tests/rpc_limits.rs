//! The node-to-node port before a peer has proven it knows the cluster
//! secret: handshake frames are small and bounded, and only so many
//! handshakes run at once, so strangers cannot make a node hold memory or
//! connections.

use std::net::SocketAddr;
use std::time::Duration;

use shoal_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Longest wait for something the node must do on its own.
const T: Duration = Duration::from_secs(20);
/// The wire's version byte, after each frame's length (`WIRE_VERSION` of
/// transport/src/wire.rs, bumped with every change of the encoding).
const WIRE_VERSION: u8 = 12;
/// A frame of the 16-byte nonce the node sends first: length, version, body.
const NONCE_FRAME_BYTES: usize = 4 + 1 + 16;

async fn connect_rpc(node: &Node) -> TcpStream {
    TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], node.ports().rpc)))
        .await
        .expect("connecting to the RPC port")
}

/// The node's nonce frame, or `None` if it closed the connection first.
async fn read_nonce(stream: &mut TcpStream) -> Option<[u8; NONCE_FRAME_BYTES]> {
    let mut frame = [0u8; NONCE_FRAME_BYTES];
    match tokio::time::timeout(T, stream.read_exact(&mut frame)).await {
        Ok(Ok(_)) => Some(frame),
        Ok(Err(_)) => None,
        Err(_) => panic!("the node neither sent a nonce nor closed within {T:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stranger_cannot_send_a_large_handshake_frame() {
    let node = Node::start().await;
    let mut stream = connect_rpc(&node).await;
    let nonce = read_nonce(&mut stream).await.expect("a nonce");
    assert_eq!(nonce[4], WIRE_VERSION);
    // A "proof" of 1 MiB: the node must refuse it by its length alone and
    // never read it, so no verdict comes back.
    let len: u32 = (1 << 20) + 1;
    let mut frame = len.to_be_bytes().to_vec();
    frame.push(WIRE_VERSION);
    let _ = stream.write_all(&frame).await;
    let _ = stream.write_all(&vec![0u8; 1 << 20]).await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(T, stream.read_to_end(&mut answer))
        .await
        .expect("the node did not close the connection");
    assert!(answer.is_empty(), "the node answered {answer:?}");
    assert_eq!(node.get_path("/ready").await.status.as_u16(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn handshakes_past_the_bound_are_closed_at_once() {
    let node = Node::start().await;
    // 100 connections that never answer the nonce: 64 handshakes may be
    // under way (each gives up after 5 s), the others are closed unanswered.
    let mut strangers = Vec::new();
    for _ in 0..100 {
        strangers.push(connect_rpc(&node).await);
    }
    let mut challenged = 0;
    let mut closed = 0;
    for stream in &mut strangers {
        match read_nonce(stream).await {
            Some(_) => challenged += 1,
            None => closed += 1,
        }
    }
    assert!(challenged <= 64, "{challenged} handshakes at once");
    assert!(closed >= 36, "{closed} closed");
    let metrics = node.get_path("/metrics").await.text;
    let refused: u64 = metrics
        .lines()
        .find(|l| l.starts_with("shoal_rpc_handshakes_refused_total"))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0);
    assert!(refused >= 36, "{metrics}");
    // Once the strangers' handshakes time out, a new connection is
    // challenged again.
    wait_for(T, "a new connection challenged", || async {
        let mut stream = connect_rpc(&node).await;
        match read_nonce(&mut stream).await {
            Some(_) => Ok(()),
            None => Err("closed unanswered".to_string()),
        }
    })
    .await;
    node.put("rpc/still", b"up").await;
}
