//! Hostile path segments on every documented route: the routes come from the
//! node's own OpenAPI document, so a route added later is covered too.

use shoal_tests::*;

/// Every path parameter of every documented operation, given a segment that
/// is not UTF-8 after percent-decoding (`%FF`), is answered with a JSON
/// 4xx error, never the web framework's plain-text rejection. The routes come
/// from the node's own OpenAPI document, so a new route is covered when added.
#[tokio::test(flavor = "multi_thread")]
async fn a_path_parameter_that_is_not_utf8_is_answered_in_json() {
    let node = Node::start().await;
    let document = node.get_path("/openapi.json").await.ok();
    let mut failures = Vec::new();
    let mut tried = 0;
    for (path, operations) in document["paths"].as_object().expect("paths") {
        if !path.contains('{') {
            continue;
        }
        let mut hostile = String::new();
        for (i, part) in path.split('{').enumerate() {
            match part.split_once('}') {
                Some((_, rest)) if i > 0 => {
                    hostile.push_str("%FF");
                    hostile.push_str(rest);
                }
                _ => hostile.push_str(part),
            }
        }
        for method in operations.as_object().expect("operations").keys() {
            let method = Method::from_bytes(method.to_uppercase().as_bytes()).expect("method");
            tried += 1;
            let reply = node.send(node.request(method.clone(), &hostile)).await;
            let status = reply.status.as_u16();
            let anything_4xx: Vec<(u16, &[&str])> = (400..500)
                .map(|status| (status, PATH_ERROR_CODES))
                .collect();
            if !(400..500).contains(&status) {
                failures.push(format!("{method} {hostile}: {}", reply.describe()));
            } else if let Err(problem) = error_matches(&reply, &anything_4xx) {
                failures.push(format!("{method} {hostile}: {problem}"));
            }
        }
    }
    assert!(tried > 20, "only {tried} operations with path parameters");
    assert!(
        failures.is_empty(),
        "{} of {tried} answers are not a JSON 4xx error:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// The codes a path segment that is not UTF-8 may be answered with.
const PATH_ERROR_CODES: &[&str] = &[
    "bad_request",
    "invalid_key",
    "invalid_topic",
    "invalid_stream",
    "not_found",
    "key_not_found",
    "lease_not_found",
    "trace_not_found",
    "method_not_allowed",
];
