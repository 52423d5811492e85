//! TLS on the API and both OTLP receivers (`--tls-cert`, `--tls-key`,
//! `--tls-ca`), with certificates from `shoal tls ca|cert`: real clients
//! (curl, openssl s_client, the OpenTelemetry SDK, the Elasticsearch
//! client, the `shoal` CLI) connect only when they trust the CA, plain
//! HTTP gets nothing, TLS 1.1 is refused, a changed certificate is served
//! without a restart, and nodes reach each other's API over TLS.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine;
use shoal_tests::python::run_python_with_env;
use shoal_tests::*;

/// How long a certificate change may take to be served (the node looks at
/// its files every 2 s).
const RELOAD_WAIT: Duration = Duration::from_secs(20);

/// A CA made with `shoal tls ca` in `dir`, and a node certificate for
/// localhost and 127.0.0.1 made with `shoal tls cert node`.
struct Certificates {
    dir: PathBuf,
    ca_pem: Vec<u8>,
}

impl Certificates {
    async fn make(dir: &Path) -> Certificates {
        let dir_arg = dir.display().to_string();
        run_shoal(&["tls", "ca", "--dir", &dir_arg], None, &[])
            .await
            .assert_success();
        run_shoal(&["tls", "cert", "node", "--dir", &dir_arg], None, &[])
            .await
            .assert_success();
        Certificates {
            dir: dir.to_path_buf(),
            ca_pem: std::fs::read(dir.join("ca.pem")).expect("ca.pem"),
        }
    }

    fn path(&self, file: &str) -> String {
        self.dir.join(file).display().to_string()
    }

    fn node_args(&self) -> Vec<String> {
        vec![
            "--tls-cert".into(),
            self.path("node.pem"),
            "--tls-key".into(),
            self.path("node-key.pem"),
            "--tls-ca".into(),
            self.path("ca.pem"),
        ]
    }
}

fn strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

async fn run(program: &str, args: &[&str]) -> std::process::Output {
    tokio::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"))
}

fn describe(output: &std::process::Output) -> String {
    format!(
        "{}\nstdout: {}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// `openssl s_client` offering only `version` (e.g. `-tls1_2`).
async fn s_client(port: u16, ca: &str, version: &str) -> std::process::Output {
    let connect = format!("127.0.0.1:{port}");
    // SECLEVEL=0 lets the client offer TLS 1.1 at all: the refusal must be the node's.
    run(
        "openssl",
        &[
            "s_client",
            "-connect",
            &connect,
            "-CAfile",
            ca,
            "-verify_return_error",
            version,
            "-cipher",
            "DEFAULT@SECLEVEL=0",
        ],
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn real_clients_reach_the_api_and_both_otlp_receivers_over_tls_only() {
    let dir = tempfile::tempdir().expect("temp dir");
    let certificates = Certificates::make(dir.path()).await;
    let key_mode = std::fs::metadata(dir.path().join("node-key.pem"))
        .expect("the key file")
        .permissions()
        .mode();
    assert_eq!(key_mode & 0o077, 0, "the key is readable by others");
    let again = run_shoal(
        &["tls", "ca", "--dir", &dir.path().display().to_string()],
        None,
        &[],
    )
    .await;
    again.assert_clean_failure();
    assert!(again.stderr.contains("exists"), "{}", again.stderr);

    let management = "shoal_management-secret-for-the-tls-test";
    let token_file = dir.path().join("management-token");
    std::fs::write(&token_file, management).expect("token file");
    let mut args = certificates.node_args();
    args.extend([
        "--acl".into(),
        "--initial-management-token-file".into(),
        token_file.display().to_string(),
    ]);
    let node = Node::builder()
        .args(&strs(&args))
        .otlp()
        .https(&certificates.ca_pem)
        .start()
        .await;
    let endpoint = node.endpoint();
    assert!(endpoint.starts_with("https://"), "{endpoint}");

    // HTTP/2 by ALPN for a client that offers it, HTTP/1.1 for one that does not.
    let whoami = node
        .client()
        .get(node.url("/v1/acl/whoami"))
        .bearer_auth(management)
        .send()
        .await
        .expect("whoami over TLS");
    assert_eq!(whoami.status(), StatusCode::OK);
    assert_eq!(whoami.version(), reqwest::Version::HTTP_2);
    let http1 = reqwest::Client::builder()
        .http1_only()
        .add_root_certificate(
            reqwest::Certificate::from_pem(&certificates.ca_pem).expect("the CA's PEM"),
        )
        .build()
        .expect("client");
    let whoami = http1
        .get(node.url("/v1/acl/whoami"))
        .bearer_auth(management)
        .send()
        .await
        .expect("whoami over TLS and HTTP/1.1");
    assert_eq!(whoami.status(), StatusCode::OK);
    assert_eq!(whoami.version(), reqwest::Version::HTTP_11);

    // curl with the CA, and without it.
    let ca = certificates.path("ca.pem");
    let bearer = format!("Authorization: Bearer {management}");
    let whoami_url = node.url("/v1/acl/whoami");
    let with_ca = run(
        "curl",
        &["-sS", "--cacert", &ca, "-H", &bearer, &whoami_url],
    )
    .await;
    assert!(with_ca.status.success(), "{}", describe(&with_ca));
    assert!(
        String::from_utf8_lossy(&with_ca.stdout).contains("management"),
        "{}",
        describe(&with_ca)
    );
    let without_ca = run("curl", &["-sS", "-H", &bearer, &whoami_url]).await;
    // 60: the peer's certificate could not be verified.
    assert_eq!(
        without_ca.status.code(),
        Some(60),
        "{}",
        describe(&without_ca)
    );

    // Plain HTTP on the TLS port gets no answer, and the node stays up.
    let plain = format!("http://127.0.0.1:{}/health", node.api_port);
    let answer = reqwest::Client::new()
        .get(&plain)
        .timeout(Duration::from_secs(5))
        .send()
        .await;
    assert!(answer.is_err(), "plain HTTP was answered: {answer:?}");

    // TLS 1.2 and 1.3 are served; TLS 1.1 is refused by the node.
    for version in ["-tls1_2", "-tls1_3"] {
        let output = s_client(node.api_port, &ca, version).await;
        let text = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success() && text.contains("Verify return code: 0 (ok)"),
            "{version}: {}",
            describe(&output)
        );
        // OpenSSL lists AES-256 first; the node's order (AES-128 first) wins.
        assert!(
            text.contains("TLS_AES_128_GCM_SHA256") || text.contains("-AES128-GCM-SHA256"),
            "{version} did not settle on AES-128-GCM: {}",
            describe(&output)
        );
    }
    let old = s_client(node.api_port, &ca, "-tls1_1").await;
    assert!(
        !old.status.success(),
        "TLS 1.1 was served: {}",
        describe(&old)
    );
    // The refusal is the node's alert (rustls answers handshake_failure).
    assert!(
        String::from_utf8_lossy(&old.stderr).contains("alert"),
        "TLS 1.1 was not refused by the node: {}",
        describe(&old)
    );

    // The OpenTelemetry SDK over TLS, on both receivers, with a bearer header.
    let header = format!("authorization=Bearer%20{management}");
    let grpc = format!("https://127.0.0.1:{}", node.otlp_grpc_port.expect("gRPC"));
    let http = format!("https://127.0.0.1:{}", node.otlp_http_port.expect("HTTP"));
    for target in [["--grpc", grpc.as_str()], ["--http", http.as_str()]] {
        let output = run_python_with_env(
            "otel_export.py",
            &target,
            &[
                ("OTEL_EXPORTER_OTLP_HEADERS", &header),
                ("OTEL_EXPORTER_OTLP_CERTIFICATE", &ca),
            ],
        )
        .await;
        output.assert_success();
    }
    // Without TLS the gRPC exporter gets nowhere.
    let plain_grpc = format!("127.0.0.1:{}", node.otlp_grpc_port.expect("gRPC"));
    let output = run_python_with_env(
        "otel_export.py",
        &["--grpc", &plain_grpc],
        &[("OTEL_EXPORTER_OTLP_HEADERS", &header)],
    )
    .await;
    assert!(
        !output.status.success(),
        "a plaintext gRPC export succeeded"
    );

    // The Elasticsearch client over https with an API key.
    let api_key = base64::engine::general_purpose::STANDARD.encode(format!("tls:{management}"));
    let output = run_python_with_env(
        "es_bulk.py",
        &[&endpoint, "es-tls"],
        &[("ES_API_KEY", &api_key), ("ES_CA_CERTS", &ca)],
    )
    .await;
    output.assert_success();

    // The CLI with --cacert, and without.
    let cli = |extra: &[&str]| {
        let mut args = vec![
            "kv",
            "put",
            "tls-key",
            "v1",
            "--endpoint",
            endpoint.as_str(),
            "--token",
            management,
        ];
        args.extend_from_slice(extra);
        args.into_iter().map(str::to_string).collect::<Vec<_>>()
    };
    let with_ca = cli(&["--cacert", &ca]);
    run_shoal(&strs(&with_ca), None, &[]).await.assert_success();
    let without = run_shoal(&strs(&cli(&[])), None, &[]).await;
    without.assert_clean_failure();
    assert!(
        without.stderr.contains("certificate") && without.stderr.contains("--cacert"),
        "{}",
        without.stderr
    );
    let value = node
        .send(
            node.request(Method::GET, "/v1/kv/tls-key")
                .bearer_auth(management),
        )
        .await;
    assert_eq!(value.status, StatusCode::OK, "{}", value.describe());
}

/// A fresh client (so a fresh handshake) trusting only `ca_pem`; whether
/// `/health` answers through it.
async fn trusted_by(node: &Node, ca_pem: &[u8]) -> bool {
    let client = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca_pem).expect("PEM"))
        .timeout(Duration::from_secs(5))
        .build()
        .expect("client");
    matches!(
        client.get(node.url("/health")).send().await,
        Ok(response) if response.status() == StatusCode::OK
    )
}

/// `shoal_tls_reloads_total{result}` of the node, asked with `client`
/// (which trusts whichever certificate the node serves).
async fn tls_reloads(client: &reqwest::Client, node: &Node, result: &str) -> u64 {
    let line = format!("shoal_tls_reloads_total{{result=\"{result}\"}}");
    metric(client, node, &line).await
}

/// Replaces `to`'s file with `from`'s by a rename, as a deployment tool would.
fn replace(from: &Path, to: &Path) {
    let partial = to.with_extension("partial");
    std::fs::copy(from, &partial).expect("copy");
    std::fs::rename(&partial, to).expect("rename");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_changed_certificate_is_served_without_a_restart_and_a_bad_one_is_not() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (a_dir, b_dir, node_dir) = (
        dir.path().join("a"),
        dir.path().join("b"),
        dir.path().join("node"),
    );
    let a = Certificates::make(&a_dir).await;
    let b = Certificates::make(&b_dir).await;
    std::fs::create_dir(&node_dir).expect("mkdir");
    let (certificate, key) = (node_dir.join("node.pem"), node_dir.join("node-key.pem"));
    replace(&a_dir.join("node.pem"), &certificate);
    replace(&a_dir.join("node-key.pem"), &key);
    let node = Node::builder()
        .args(&[
            "--tls-cert",
            &certificate.display().to_string(),
            "--tls-key",
            &key.display().to_string(),
        ])
        .https(&a.ca_pem)
        .start()
        .await;
    assert!(trusted_by(&node, &a.ca_pem).await);
    assert!(
        !trusted_by(&node, &b.ca_pem).await,
        "B's CA accepted A's certificate"
    );
    let both = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&a.ca_pem).expect("PEM"))
        .add_root_certificate(reqwest::Certificate::from_pem(&b.ca_pem).expect("PEM"))
        .build()
        .expect("client");

    // New files: served from the next handshake on.
    replace(&b_dir.join("node-key.pem"), &key);
    replace(&b_dir.join("node.pem"), &certificate);
    eventually(RELOAD_WAIT, "B's certificate to be served", || async {
        trusted_by(&node, &b.ca_pem).await.then_some(())
    })
    .await;
    assert!(
        !trusted_by(&node, &a.ca_pem).await,
        "A's certificate is still served"
    );

    // A certificate that is not PEM is refused; B's stays in use.
    let errors = tls_reloads(&both, &node, "error").await;
    std::fs::write(&certificate, "not a certificate").expect("write");
    eventually(RELOAD_WAIT, "the bad certificate to be refused", || async {
        (tls_reloads(&both, &node, "error").await > errors).then_some(())
    })
    .await;
    assert!(
        trusted_by(&node, &b.ca_pem).await,
        "the bad file replaced B's certificate"
    );

    // SIGHUP reads the files again even when they did not change.
    let loaded = tls_reloads(&both, &node, "ok").await;
    replace(&b_dir.join("node.pem"), &certificate);
    eventually(RELOAD_WAIT, "B's certificate to load again", || async {
        (tls_reloads(&both, &node, "ok").await > loaded).then_some(())
    })
    .await;
    let reloads = tls_reloads(&both, &node, "ok").await;
    node.signal(libc::SIGHUP);
    eventually(RELOAD_WAIT, "a reload on SIGHUP", || async {
        (tls_reloads(&both, &node, "ok").await > reloads).then_some(())
    })
    .await;
    assert!(trusted_by(&node, &b.ca_pem).await);
}

/// The value of metric `name` (labels included) in the node's `/metrics`,
/// asked with `client`; 0 when absent.
async fn metric(client: &reqwest::Client, node: &Node, name: &str) -> u64 {
    let Ok(response) = client.get(node.url("/metrics")).send().await else {
        return 0;
    };
    let text = response.text().await.unwrap_or_default();
    metric_value(&text, name).map_or(0, |count| count as u64)
}

#[tokio::test(flavor = "multi_thread")]
async fn nodes_talk_over_mutual_tls_and_a_node_of_another_ca_is_not_added() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ours = Certificates::make(&dir.path().join("ours")).await;
    let theirs = Certificates::make(&dir.path().join("theirs")).await;
    let plan = shoal_testkit::ClusterPlan::new(2).expect("ports");
    let secret = ["--cluster-secret", "the-same-secret"];
    // Forming the cluster is Raft over mutual TLS.
    let mut nodes: Vec<Node> = (0..2)
        .map(|i| {
            Node::from_process(
                plan.node(i)
                    .args(&ours.node_args())
                    .args(&secret)
                    .https(&ours.ca_pem)
                    .spawn()
                    .expect("spawn"),
            )
        })
        .collect();
    for node in &mut nodes {
        node.wait_ready().await;
    }
    // A write on either node is forwarded to the leader and replicated.
    for (i, node) in nodes.iter().enumerate() {
        let put = node.put_with(&format!("tls/{i}"), b"v", &[]).await;
        assert_eq!(put.status, StatusCode::OK, "{}", put.describe());
    }
    for node in &nodes {
        for i in 0..2 {
            let (status, body) = node.get(&format!("tls/{i}")).await;
            assert_eq!(status, StatusCode::OK, "{body}");
        }
    }
    // Values of many TLS records each (a TLS stream reads ahead of rustls
    // and holds more unsent ciphertext than rustls' default): written over
    // https, replicated over mutual TLS, read back the same from both nodes.
    let large: Vec<Vec<u8>> = (0..2u32)
        .map(|i| {
            (0..900_000u32)
                .map(|j| (j.wrapping_mul(2_654_435_761).wrapping_add(i) >> 13) as u8)
                .collect()
        })
        .collect();
    for (i, value) in large.iter().enumerate() {
        let put = nodes[i]
            .put_with(&format!("tls/large{i}"), value, &[])
            .await;
        assert_eq!(put.status, StatusCode::OK, "{}", put.describe());
    }
    for node in &nodes {
        for (i, value) in large.iter().enumerate() {
            let kv = node.get_kv(&format!("tls/large{i}")).await;
            let read = base64::engine::general_purpose::STANDARD
                .decode(kv["value"].as_str().expect("a base64 value"))
                .expect("base64");
            assert!(
                &read == value,
                "tls/large{i} came back changed ({} bytes)",
                read.len()
            );
        }
    }

    // Dead letters come from every node: the other one is asked over https.
    let put = nodes[0]
        .send(
            nodes[0]
                .request(Method::PUT, "/v1/webhooks/tls-hook")
                .json(&json!({"url": "http://127.0.0.1:9/hook", "pattern": "tls.*"})),
        )
        .await;
    assert_eq!(put.status, StatusCode::OK, "{}", put.describe());
    let dead_letters = nodes[0]
        .get_path("/v1/webhooks/tls-hook/dead-letters")
        .await;
    assert_eq!(
        dead_letters.body["unreachable"],
        json!([]),
        "{}",
        dead_letters.describe()
    );

    // A node with the cluster's name and secret but a certificate from
    // another CA gossips its way in, and is not added to Raft.
    let mut stranger = Node::from_process(
        shoal_testkit::NodeProcess::builder()
            .label("stranger")
            .args(&plan.seed_args())
            .args(&theirs.node_args())
            .args(&secret)
            .https(&theirs.ca_pem)
            .spawn()
            .expect("spawn the stranger"),
    );
    let refused = "shoal_membership_join_refused_total";
    eventually(
        Duration::from_secs(30),
        "the leader to refuse the stranger",
        || async {
            let counts = [
                metric(nodes[0].client(), &nodes[0], refused).await,
                metric(nodes[1].client(), &nodes[1], refused).await,
            ];
            (counts.iter().sum::<u64>() > 0).then_some(())
        },
    )
    .await;
    assert!(stranger.is_running(), "the stranger exited");
    let view = nodes[0].get_path("/v1/cluster").await;
    let members = members_of(&view.body);
    let raft_members = members.iter().filter(|m| m.is_raft_member()).count();
    assert_eq!(raft_members, 2, "{}", view.describe());
    // The stranger refused the leader's certificate too.
    let rejected = "shoal_rpc_rejected_peers_total{reason=\"tls\"}";
    assert!(metric(stranger.client(), &stranger, rejected).await > 0);
    // The cluster still takes writes.
    let put = nodes[1].put_with("tls/after", b"v", &[]).await;
    assert_eq!(put.status, StatusCode::OK, "{}", put.describe());
}
