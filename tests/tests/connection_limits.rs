//! Limits that keep a node's HTTP listener alive under abusive clients:
//! connections per client address and in all (past them a JSON 429 or
//! 503, then close), and the deadline for a request's headers, which ends
//! slowloris connections and idle ones while streams stay open, and the
//! request timeout, which also bounds a body sent slowly; HTTP/2
//! connections without a stream told to go away after the same deadline;
//! TCP keepalive on every connection. The OTLP/gRPC listener has the same
//! connection limits.

use std::net::SocketAddr;
use std::time::Duration;

use shoal_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::task::JoinHandle;

/// Longest wait for something the node must do on its own.
const T: Duration = Duration::from_secs(20);

fn api_addr(node: &Node) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], node.ports().api))
}

/// A TCP connection to the node's API from `source` (any port).
async fn connect_from(node: &Node, source: [u8; 4]) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("a TCP socket");
    socket
        .bind(SocketAddr::from((source, 0)))
        .expect("binding the source address");
    socket
        .connect(api_addr(node))
        .await
        .expect("connecting to the API")
}

/// Everything the node sends until it closes the connection (or `T`).
async fn read_to_close(stream: &mut TcpStream) -> String {
    let mut answer = Vec::new();
    let read = tokio::time::timeout(T, stream.read_to_end(&mut answer)).await;
    assert!(
        read.is_ok(),
        "the node did not close the connection within {T:?}"
    );
    String::from_utf8_lossy(&answer).into_owned()
}

/// `GET path` on this connection: the whole answer.
async fn get_on(stream: &mut TcpStream, path: &str) -> String {
    let request = format!("GET {path} HTTP/1.1\r\nhost: shoal\r\nconnection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .expect("writing a request");
    read_to_close(stream).await
}

/// `GET /ready` on this connection: the status line of the answer.
async fn ready_on(stream: &mut TcpStream) -> String {
    let answer = get_on(stream, "/ready").await;
    answer.lines().next().unwrap_or_default().to_string()
}

/// Waits until a connection from `source` is refused with `status` (the
/// node counts a connection once it has accepted it, so the refusal
/// comes once the held ones are counted), and checks the answer.
async fn wait_refused(node: &Node, source: [u8; 4], status: &str) {
    let answer = wait_for(
        T,
        &format!("a connection from {source:?} refused"),
        || async {
            let mut extra = connect_from(node, source).await;
            let answer = get_on(&mut extra, "/ready").await;
            match answer.starts_with(&format!("HTTP/1.1 {status}")) {
                true => Ok(answer),
                false => Err(answer),
            }
        },
    )
    .await;
    assert_refused(&answer, status);
}

fn assert_refused(answer: &str, status: &str) {
    assert!(
        answer.starts_with(&format!("HTTP/1.1 {status}")),
        "{answer}"
    );
    let body = answer.split("\r\n\r\n").nth(1).unwrap_or_default();
    let body: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {answer}"));
    assert_eq!(body["error"]["code"], "too_many_connections", "{answer}");
}

fn refused_count(metrics: &str, limit: &str) -> u64 {
    refused_count_on(metrics, "api", limit)
}

fn refused_count_on(metrics: &str, listener: &str, limit: &str) -> u64 {
    metrics
        .lines()
        .find(|l| {
            l.starts_with("shoal_api_connections_refused_total")
                && l.contains(&format!("listener=\"{listener}\""))
                && l.contains(&format!("limit=\"{limit}\""))
        })
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_address_past_its_limit_is_refused_and_others_are_served() {
    let node = Node::start_with(&["--max-connections-per-client", "20"]).await;
    let mut held = Vec::new();
    for _ in 0..20 {
        held.push(connect_from(&node, [127, 0, 0, 1]).await);
    }
    wait_refused(&node, [127, 0, 0, 1], "429").await;
    // Another address is served meanwhile.
    let mut other = connect_from(&node, [127, 0, 0, 2]).await;
    assert_eq!(ready_on(&mut other).await, "HTTP/1.1 200 OK");
    // From 127.0.0.3, an address with no held connections.
    let metrics = get_on(&mut connect_from(&node, [127, 0, 0, 3]).await, "/metrics").await;
    assert!(refused_count(&metrics, "client") >= 1, "{metrics}");
    // Closed connections give their places back.
    drop(held);
    wait_for(T, "a connection served again", || async {
        let mut again = connect_from(&node, [127, 0, 0, 1]).await;
        let status = ready_on(&mut again).await;
        match status == "HTTP/1.1 200 OK" {
            true => Ok(()),
            false => Err(status),
        }
    })
    .await;
}

/// What an HTTP/2 (and so gRPC) client sends first.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

#[tokio::test(flavor = "multi_thread")]
async fn the_otlp_grpc_listener_refuses_a_client_address_past_its_limit() {
    let node = Node::builder()
        .otlp()
        .args(&["--max-connections-per-client", "5"])
        .start()
        .await;
    let grpc: SocketAddr = node.otlp_grpc_addr().parse().expect("an address");
    let connect = |source: [u8; 4]| async move {
        let socket = TcpSocket::new_v4().expect("a TCP socket");
        socket
            .bind(SocketAddr::from((source, 0)))
            .expect("binding the source address");
        socket.connect(grpc).await.expect("connecting to OTLP/gRPC")
    };
    let mut held = Vec::new();
    for _ in 0..5 {
        held.push(connect([127, 0, 0, 1]).await);
    }
    let answer = wait_for(T, "a sixth gRPC connection refused", || async {
        let mut extra = connect([127, 0, 0, 1]).await;
        extra
            .write_all(H2_PREFACE)
            .await
            .expect("writing the preface");
        let answer = read_to_close(&mut extra).await;
        match answer.starts_with("HTTP/1.1 429") {
            true => Ok(answer),
            false => Err(answer),
        }
    })
    .await;
    assert_refused(&answer, "429");
    // Another address gets an HTTP/2 server: its first frame is SETTINGS.
    let mut other = connect([127, 0, 0, 2]).await;
    other
        .write_all(H2_PREFACE)
        .await
        .expect("writing the preface");
    let mut frame = [0u8; 9];
    tokio::time::timeout(T, other.read_exact(&mut frame))
        .await
        .expect("the server's first frame in time")
        .expect("reading the server's first frame");
    assert_eq!(frame[3], 0x4, "a SETTINGS frame: {frame:?}");
    let metrics = node.get_path("/metrics").await.text;
    assert!(
        refused_count_on(&metrics, "otlp_grpc", "client") >= 1,
        "{metrics}"
    );
    drop(held);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_listener_past_its_limit_answers_503_and_stays_up() {
    let node = Node::start_with(&["--max-connections", "40"]).await;
    let mut held = Vec::new();
    for i in 0..40u8 {
        held.push(connect_from(&node, [127, 0, 1, i]).await);
    }
    wait_refused(&node, [127, 0, 2, 1], "503").await;
    drop(held);
    wait_for(T, "the node serving again", || async {
        let reply = node.get_path("/ready").await;
        match reply.status.as_u16() {
            200 => Ok(()),
            _ => Err(reply.describe()),
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn slow_and_idle_connections_are_closed_but_streams_stay_open() {
    let node = Node::start_with(&["--header-read-timeout-ms", "1000"]).await;
    let mut watch = node.watch(&[("key", "limits/k")], None).await;

    // Thousands of idle connections from one address: every one is closed,
    // those the node took once their headers did not come in time, those
    // past 1024 open ones when their request did not come.
    let mut idle = Vec::new();
    for _ in 0..2000 {
        idle.push(connect_from(&node, [127, 0, 0, 5]).await);
    }
    // A slowloris client: a header line every 200 ms, never the end.
    let mut slow = connect_from(&node, [127, 0, 0, 4]).await;
    slow.write_all(b"GET /ready HTTP/1.1\r\n")
        .await
        .expect("writing the request line");
    let trickle = tokio::spawn(async move {
        for i in 0..100 {
            if slow
                .write_all(format!("x-slow-{i}: 1\r\n").as_bytes())
                .await
                .is_err()
            {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        false
    });
    for stream in &mut idle {
        let answer = read_to_close(stream).await;
        // Closed without an answer: the header deadline passed, or (past
        // the limit) the request never came.
        assert_eq!(answer, "", "an idle connection was answered");
    }
    assert!(
        tokio::time::timeout(T, trickle)
            .await
            .expect("the slow client was not cut off within 20 s")
            .expect("the slow client's task"),
        "the node read headers for 20 s"
    );

    // The watch opened before all this still delivers.
    let revision = num(&node.put("limits/k", b"still here").await, "/revision");
    let (_, batch) = watch.next_event(T).await;
    assert_eq!(
        changes(&[batch]),
        vec![Change::put(revision, "limits/k", b"still here")]
    );
    assert_eq!(node.get_path("/ready").await.status.as_u16(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_body_sent_slowly_is_answered_504_when_the_request_time_runs_out() {
    let node = Node::start_with(&["--request-timeout-ms", "500"]).await;
    let mut stream = connect_from(&node, [127, 0, 0, 1]).await;
    stream
        .write_all(b"PUT /v1/kv/slow HTTP/1.1\r\nHost: shoal\r\nContent-Length: 1000\r\n\r\n")
        .await
        .expect("sending the headers");
    // One byte a quarter second: the body would take four minutes.
    let trickle = async {
        loop {
            tokio::time::sleep(Duration::from_millis(250)).await;
            // After its answer the node may close: a failed write is fine.
            let _ = stream.write_all(b"x").await;
            let mut answer = [0u8; 512];
            match tokio::time::timeout(Duration::from_millis(1), stream.read(&mut answer)).await {
                Ok(Ok(read)) => return String::from_utf8_lossy(&answer[..read]).into_owned(),
                Ok(Err(e)) => return format!("the connection failed: {e}"),
                Err(_) => {}
            }
        }
    };
    let answer = tokio::time::timeout(T, trickle)
        .await
        .expect("the node answered the slow body within 20 s");
    assert!(answer.starts_with("HTTP/1.1 504"), "{answer}");
    assert!(answer.contains("\"timeout\""), "{answer}");
    let (status, _) = node.get("slow").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "the slow write was stored");
}

/// The node's side of the TCP connection from `client` to its API port, as
/// `/proc/net/tcp` shows it: its timer field (`tr:when`, 02 = keepalive).
fn node_side_timer(node: &Node, client: SocketAddr) -> Option<String> {
    let hex = |address: SocketAddr| match address {
        SocketAddr::V4(v4) => format!(
            "{:08X}:{:04X}",
            u32::from_le_bytes(v4.ip().octets()),
            v4.port()
        ),
        SocketAddr::V6(_) => String::new(),
    };
    let (local, remote) = (hex(api_addr(node)), hex(client));
    let table = std::fs::read_to_string("/proc/net/tcp").expect("/proc/net/tcp");
    table.lines().find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        (fields.len() > 5 && fields[1] == local && fields[2] == remote && fields[3] == "01")
            .then(|| fields[5].to_string())
    })
}

/// A peer that is gone (host down, network cut) never closes its side:
/// every connection the node takes has TCP keepalive on, so the kernel
/// probes an idle one and ends it when nothing answers.
#[tokio::test(flavor = "multi_thread")]
async fn connections_the_node_takes_have_tcp_keepalive_on() {
    let node = Node::start().await;
    let idle = connect_from(&node, [127, 0, 0, 6]).await;
    let client = idle.local_addr().expect("the client's address");
    wait_for(
        T,
        "the node's side of the connection to have a keepalive timer",
        || async {
            match node_side_timer(&node, client) {
                Some(timer) if timer.starts_with("02:") => Ok(()),
                other => Err(format!("timer {other:?}")),
            }
        },
    )
    .await;
}

/// An HTTP/2 connection to the node: its request sender, and the task that
/// drives it, which ends when the node closes the connection.
async fn h2_connect(node: &Node) -> (h2::client::SendRequest<bytes::Bytes>, JoinHandle<()>) {
    let tcp = TcpStream::connect(api_addr(node))
        .await
        .expect("connecting to the API");
    let (sender, connection) = h2::client::handshake(tcp)
        .await
        .expect("an HTTP/2 handshake");
    let driver = tokio::spawn(async move {
        let _ = connection.await;
    });
    let sender = sender
        .ready()
        .await
        .expect("the connection takes a request");
    (sender, driver)
}

/// Sends `request` on the connection; its answer's status and body, and
/// the request's stream (open for a WebSocket's frames, else ended).
async fn h2_send(
    sender: &mut h2::client::SendRequest<bytes::Bytes>,
    request: http::Request<()>,
) -> (u16, h2::RecvStream, h2::SendStream<bytes::Bytes>) {
    let end_of_stream = request.method() != http::Method::CONNECT;
    let (answer, body) = sender
        .send_request(request, end_of_stream)
        .expect("a stream for the request");
    let answer = tokio::time::timeout(T, answer)
        .await
        .expect("an answer within 20 s")
        .expect("an answer");
    (answer.status().as_u16(), answer.into_body(), body)
}

/// A WebSocket over HTTP/2 (RFC 8441) to `path`: its answer's status, the
/// node's frames and the stream to send frames on.
async fn h2_websocket(
    sender: &mut h2::client::SendRequest<bytes::Bytes>,
    node: &Node,
    path: &str,
) -> (u16, h2::RecvStream, h2::SendStream<bytes::Bytes>) {
    let connect = http::Request::builder()
        .method(http::Method::CONNECT)
        .uri(node.url(path))
        .extension(h2::ext::Protocol::from_static("websocket"))
        .header("sec-websocket-version", "13")
        .body(())
        .expect("a request");
    h2_send(sender, connect).await
}

/// A client's WebSocket text frame (masked, as clients must).
fn masked_text_frame(text: &str) -> bytes::Bytes {
    let mask = [0x5a, 0x13, 0xc7, 0x2e];
    assert!(text.len() < 126, "a short frame");
    let mut frame = vec![0x81, 0x80 | text.len() as u8];
    frame.extend_from_slice(&mask);
    frame.extend(text.bytes().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    frame.into()
}

fn h2_get(node: &Node, path: &str) -> http::Request<()> {
    http::Request::get(node.url(path))
        .body(())
        .expect("a request")
}

/// Reads `body` until what came contains `needle`.
async fn h2_read_until(body: &mut h2::RecvStream, needle: &str) {
    let mut seen = Vec::new();
    while !String::from_utf8_lossy(&seen).contains(needle) {
        let chunk = tokio::time::timeout(T, body.data())
            .await
            .unwrap_or_else(|_| panic!("{needle:?} not received within 20 s"))
            .unwrap_or_else(|| panic!("the stream ended before {needle:?}"))
            .expect("a data frame");
        let _ = body.flow_control().release_capacity(chunk.len());
        seen.extend_from_slice(&chunk);
    }
}

/// An HTTP/2 connection without a stream is told to go away after the
/// header deadline, as an idle HTTP/1.1 one is closed; a connection
/// carrying a stream (an SSE watch, WebSockets over HTTP/2, which outlive
/// their response) is not, and takes new requests however long it lasts.
/// WebSockets over HTTP/2 publish and subscribe.
#[tokio::test(flavor = "multi_thread")]
async fn http2_connections_without_a_stream_go_away_and_those_with_one_stay() {
    let node = Node::start_with(&["--header-read-timeout-ms", "1000"]).await;
    let own = node.node_id().await;

    let (mut idle, idle_driver) = h2_connect(&node).await;
    let (status, ..) = h2_send(&mut idle, h2_get(&node, "/ready")).await;
    assert_eq!(status, 200);

    let (mut watching, watching_driver) = h2_connect(&node).await;
    let (status, mut watch, _) =
        h2_send(&mut watching, h2_get(&node, "/v1/watch?key=limits/h2")).await;
    assert_eq!(status, 200, "a watch over HTTP/2");

    let (mut socket, socket_driver) = h2_connect(&node).await;
    // After an answer, the node's settings have been read.
    let (status, ..) = h2_send(&mut socket, h2_get(&node, "/ready")).await;
    assert_eq!(status, 200);
    assert!(
        socket.is_extended_connect_protocol_enabled(),
        "the node offers WebSockets over HTTP/2"
    );
    let (status, mut frames, _) =
        h2_websocket(&mut socket, &node, "/v1/subscribe/ws?pattern=limits.h2").await;
    assert_eq!(status, 200, "a subscriber's WebSocket over HTTP/2");
    node.wait_interest(own, "limits.h2", None, 1).await;
    let (status, _, mut publisher) =
        h2_websocket(&mut socket, &node, "/v1/publish/ws?topic=limits.h2").await;
    assert_eq!(status, 200, "a publisher's WebSocket over HTTP/2");

    tokio::time::timeout(T, idle_driver)
        .await
        .expect("the idle HTTP/2 connection was not closed within 20 s")
        .expect("the idle connection's task");
    // Past twice the deadline: were the streams not counted, their
    // connections would have been told to go away and refuse new streams.
    tokio::time::sleep(Duration::from_secs(3)).await;
    for (name, connection) in [("watching", &mut watching), ("socket", &mut socket)] {
        let ready = tokio::time::timeout(T, connection.clone().ready())
            .await
            .expect("ready within 20 s");
        let mut ready = ready.unwrap_or_else(|e| panic!("the {name} connection went away: {e}"));
        let (status, ..) = h2_send(&mut ready, h2_get(&node, "/ready")).await;
        assert_eq!(status, 200, "a new request on the {name} connection");
    }
    assert!(!watching_driver.is_finished() && !socket_driver.is_finished());

    node.put("limits/h2", b"seen").await;
    h2_read_until(&mut watch, "limits/h2").await;
    publisher
        .send_data(masked_text_frame("m-over-h2"), false)
        .expect("sending a frame");
    h2_read_until(&mut frames, "m-over-h2").await;

    let metrics = node.get_path("/metrics").await.text;
    let closed = metrics
        .lines()
        .find(|line| line.starts_with("shoal_api_idle_closed_total{listener=\"api\"}"))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse::<f64>().ok());
    assert_eq!(closed, Some(1.0), "{metrics}");
}
