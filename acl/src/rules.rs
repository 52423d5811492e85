//! What a rule names and how a request is matched against rules.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// The kinds of things a rule can be about. Each kind names its things one
/// way: by prefix (`kv`, `logs`, `delivery`, `workflows`, `kafka`,
/// `queue_group`), by topic pattern (`topic`), or not at all (`leases`,
/// `operator`, `acl`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Resource {
    /// Keys, by key prefix (reads, writes, watches, history, transactions).
    Kv,
    /// Leases (grant, keep alive, revoke, list).
    Leases,
    /// Topics, by NATS-style pattern: `read` subscribes, `write` publishes.
    Topic,
    /// Queue groups, by name prefix: `read` joins one (with a `topic` read
    /// rule for the pattern), as NATS's queue subscribe permissions.
    QueueGroup,
    /// Kafka topics produced to through `POST /v1/kafka/{topic}`, by prefix.
    Kafka,
    /// Log streams, by stream-name prefix: `read` searches, `write` ingests.
    Logs,
    /// Webhook, route and bridge definitions, by `webhooks/NAME`,
    /// `routes/NAME` or `bridges/NAME` prefix.
    Delivery,
    /// Workflow definitions by `NAMESPACE/NAME` prefix; instances and events.
    Workflows,
    /// The node and the cluster: status, metrics, membership, compaction.
    Operator,
    /// Tokens, roles and policies.
    Acl,
}

impl Resource {
    /// Whether this kind's names are topic patterns (else prefixes).
    fn by_pattern(self) -> bool {
        self == Resource::Topic
    }

    /// Whether this kind has names at all.
    pub fn named(self) -> bool {
        !matches!(self, Resource::Leases | Resource::Operator | Resource::Acl)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Resource::Kv => "kv",
            Resource::Leases => "leases",
            Resource::Topic => "topic",
            Resource::QueueGroup => "queue_group",
            Resource::Kafka => "kafka",
            Resource::Logs => "logs",
            Resource::Delivery => "delivery",
            Resource::Workflows => "workflows",
            Resource::Operator => "operator",
            Resource::Acl => "acl",
        }
    }
}

/// What a rule grants. `write` includes `read`; `deny` takes away both and
/// wins over any grant it overlaps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Access {
    Read,
    Write,
    Deny,
}

/// One rule of a policy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    pub resource: Resource,
    /// The prefix (or, for `topic`, the pattern) the rule is about; empty
    /// (or `>` for topics) means all of them. Ignored for `leases`,
    /// `operator` and `acl`.
    #[serde(default, rename = "match")]
    pub pattern: String,
    pub access: Access,
}

impl Rule {
    /// Whether this rule is about every name `name` stands for (`name` is a
    /// prefix, or a topic pattern for `topic`).
    fn covers(&self, name: &str) -> bool {
        if !self.resource.named() {
            return true;
        }
        if self.resource.by_pattern() {
            pattern_covers(&self.pattern, name)
        } else {
            name.starts_with(&self.pattern)
        }
    }

    /// Whether this rule is about at least one of the names `name` stands for.
    fn overlaps(&self, name: &str, whole_prefix: bool) -> bool {
        if !self.resource.named() {
            return true;
        }
        if self.resource.by_pattern() {
            patterns_overlap(&self.pattern, name)
        } else {
            name.starts_with(&self.pattern) || (whole_prefix && self.pattern.starts_with(name))
        }
    }
}

/// Whether `rules` let a request do `access` (read or write) on `name` of
/// `resource`: some rule grants it for every name `name` stands for, and no
/// deny rule touches any of them. `name` is one name, or with
/// `whole_prefix` every name that starts with it (a listing, a prefix
/// delete, a watch of a prefix); a topic pattern stands for the topics it
/// matches either way.
pub fn allows(
    rules: &[Rule],
    resource: Resource,
    name: &str,
    whole_prefix: bool,
    access: Access,
) -> bool {
    let mut granted = false;
    for rule in rules.iter().filter(|rule| rule.resource == resource) {
        match rule.access {
            Access::Deny if rule.overlaps(name, whole_prefix) => return false,
            Access::Deny => {}
            Access::Write => granted |= rule.covers(name),
            Access::Read => granted |= access == Access::Read && rule.covers(name),
        }
    }
    granted
}

/// Whether every topic the pattern `inner` matches is matched by `outer`.
fn pattern_covers(outer: &str, inner: &str) -> bool {
    fn covers(outer: &[&str], inner: &[&str]) -> bool {
        match (outer.split_first(), inner.split_first()) {
            (Some((&">", _)), Some(_)) => true,
            (None, None) => true,
            (Some((&"*", outer_rest)), Some((token, inner_rest))) => {
                *token != ">" && covers(outer_rest, inner_rest)
            }
            (Some((outer_token, outer_rest)), Some((inner_token, inner_rest))) => {
                outer_token == inner_token
                    && *inner_token != "*"
                    && *inner_token != ">"
                    && covers(outer_rest, inner_rest)
            }
            _ => false,
        }
    }
    let outer: Vec<&str> = outer.split('.').collect();
    let inner: Vec<&str> = inner.split('.').collect();
    covers(&outer, &inner)
}

/// Whether some topic is matched by both patterns.
fn patterns_overlap(a: &str, b: &str) -> bool {
    fn overlap(a: &[&str], b: &[&str]) -> bool {
        match (a.split_first(), b.split_first()) {
            (Some((&">", _)), Some(_)) | (Some(_), Some((&">", _))) => true,
            (None, None) => true,
            (Some((x, a_rest)), Some((y, b_rest))) => {
                (x == y || *x == "*" || *y == "*") && overlap(a_rest, b_rest)
            }
            _ => false,
        }
    }
    let a: Vec<&str> = a.split('.').collect();
    let b: Vec<&str> = b.split('.').collect();
    overlap(&a, &b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(resource: Resource, pattern: &str, access: Access) -> Rule {
        Rule {
            resource,
            pattern: pattern.into(),
            access,
        }
    }

    #[test]
    fn topic_patterns_cover_and_overlap_as_subscriptions_do() {
        let cases = [
            ("orders.>", "orders.eu.created", true, true),
            ("orders.>", "orders.>", true, true),
            ("orders.>", "orders", false, false),
            ("orders.*", "orders.created", true, true),
            ("orders.*", "orders.*", true, true),
            ("orders.*", "orders.>", false, true),
            ("orders.created", "orders.*", false, true),
            (">", ">", true, true),
            ("*.created", "orders.created", true, true),
            ("orders.created", "orders.deleted", false, false),
            ("a.b", "a.b.c", false, false),
        ];
        for (outer, inner, covers, overlaps) in cases {
            assert_eq!(
                pattern_covers(outer, inner),
                covers,
                "{outer} covers {inner}"
            );
            assert_eq!(
                patterns_overlap(outer, inner),
                overlaps,
                "{outer} ∩ {inner}"
            );
            assert_eq!(
                patterns_overlap(inner, outer),
                overlaps,
                "{inner} ∩ {outer}"
            );
        }
    }

    #[test]
    fn write_includes_read_and_deny_wins_over_what_it_touches() {
        let rules = [
            rule(Resource::Kv, "app/", Access::Write),
            rule(Resource::Kv, "app/secret/", Access::Deny),
            rule(Resource::Kv, "shared/", Access::Read),
        ];
        let one = |name, access| allows(&rules, Resource::Kv, name, false, access);
        let under = |name, access| allows(&rules, Resource::Kv, name, true, access);
        assert!(one("app/a", Access::Write));
        assert!(one("app/a", Access::Read));
        assert!(!one("app/secret/x", Access::Read));
        // The key app/secret is not under the denied prefix app/secret/ ...
        assert!(one("app/secret", Access::Read));
        // ... but every key under app/secret is not allowed.
        assert!(!under("app/secret", Access::Read));
        // A listing of app/ would include the denied keys.
        assert!(!under("app/", Access::Read));
        assert!(under("app/public/", Access::Read));
        assert!(one("shared/x", Access::Read));
        assert!(!one("shared/x", Access::Write));
        assert!(!one("other", Access::Read));
        assert!(!under("", Access::Read));
        // Rules of one kind say nothing about another.
        assert!(!allows(
            &rules,
            Resource::Logs,
            "app/a",
            false,
            Access::Read
        ));
    }

    #[test]
    fn unnamed_kinds_ignore_the_name() {
        let rules = [rule(Resource::Operator, "", Access::Read)];
        assert!(allows(&rules, Resource::Operator, "", false, Access::Read));
        assert!(!allows(
            &rules,
            Resource::Operator,
            "",
            false,
            Access::Write
        ));
    }
}
