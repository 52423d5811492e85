//! Policies, roles and tokens as they are stored (JSON under `_shoal/acl/`).

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use utoipa::ToSchema;

use crate::rules::{Access, Resource, Rule};

pub const ACL_PREFIX: &str = "_shoal/acl/";
pub const POLICIES_PREFIX: &str = "_shoal/acl/policies/";
pub const ROLES_PREFIX: &str = "_shoal/acl/roles/";
pub const TOKENS_PREFIX: &str = "_shoal/acl/tokens/";
/// Written once, by the bootstrap: its presence refuses a second one.
pub const BOOTSTRAP_KEY: &str = "_shoal/acl/bootstrap";

/// The built-in policy that allows everything. It is not stored and cannot
/// be changed or deleted.
pub const MANAGEMENT_POLICY: &str = "management";

/// Most rules in one policy, policies and roles on one token or role.
pub const MAX_RULES: usize = 256;
pub const MAX_LINKS: usize = 64;
const MAX_NAME_BYTES: usize = 128;
const MAX_DESCRIPTION_BYTES: usize = 1024;
const MAX_PATTERN_BYTES: usize = 1024;

/// Why a policy, role or token is not acceptable. The text is for clients.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
#[error("{0}")]
pub struct Invalid(pub String);

fn invalid(text: impl Into<String>) -> Invalid {
    Invalid(text.into())
}

/// A named set of rules.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// Set from the path.
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub rules: Vec<Rule>,
}

/// A named group of policies, given to tokens.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Role {
    /// Set from the path.
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub policies: Vec<String>,
}

/// A token as stored: the secret only as its SHA-256.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Token {
    /// The token's public id (names it in the API and in logs).
    pub accessor_id: String,
    /// Hex SHA-256 of the secret.
    pub secret_sha256: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub policies: Vec<String>,
    #[serde(default)]
    pub roles: Vec<String>,
    /// Unix milliseconds after which the token is refused.
    #[serde(default)]
    pub expires_at_ms: Option<u64>,
    pub created_at_ms: u64,
}

/// Hex SHA-256 of a secret, as tokens are stored and looked up.
pub fn secret_hash(secret: &str) -> String {
    hex(&Sha256::digest(secret.as_bytes()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A new secret: 256 random bits.
pub fn new_secret() -> String {
    format!("shoal_{}", hex(&rand::random::<[u8; 32]>()))
}

/// A new accessor id: 128 random bits.
pub fn new_accessor_id() -> String {
    hex(&rand::random::<[u8; 16]>())
}

/// Policy and role names: 1..=128 of `A-Za-z0-9_.-`.
pub fn validate_name(what: &str, name: &str) -> Result<(), Invalid> {
    if name.is_empty() || name.len() > MAX_NAME_BYTES {
        return Err(invalid(format!(
            "a {what} name has 1 to {MAX_NAME_BYTES} characters"
        )));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')))
    {
        return Err(invalid(format!(
            "{what} name {name:?} contains {c:?}; use letters, digits, '_', '.' and '-'"
        )));
    }
    Ok(())
}

fn validate_description(description: &str) -> Result<(), Invalid> {
    if description.len() > MAX_DESCRIPTION_BYTES {
        return Err(invalid(format!(
            "the description is longer than {MAX_DESCRIPTION_BYTES} bytes"
        )));
    }
    Ok(())
}

/// A list of policy or role names: each valid, at most [`MAX_LINKS`].
pub fn validate_links(what: &str, names: &[String]) -> Result<(), Invalid> {
    if names.len() > MAX_LINKS {
        return Err(invalid(format!("at most {MAX_LINKS} {what}s")));
    }
    names.iter().try_for_each(|name| validate_name(what, name))
}

impl Policy {
    pub fn validate(mut self, name: &str) -> Result<Policy, Invalid> {
        validate_name("policy", name)?;
        if name == MANAGEMENT_POLICY {
            return Err(invalid(format!(
                "the policy {MANAGEMENT_POLICY:?} is built in and cannot be changed"
            )));
        }
        validate_description(&self.description)?;
        if self.rules.len() > MAX_RULES {
            return Err(invalid(format!("a policy has at most {MAX_RULES} rules")));
        }
        for rule in &mut self.rules {
            if rule.pattern.len() > MAX_PATTERN_BYTES {
                return Err(invalid(format!(
                    "a rule's match is at most {MAX_PATTERN_BYTES} bytes"
                )));
            }
            if rule.pattern.chars().any(char::is_control) {
                return Err(invalid("a rule's match contains a control character"));
            }
            if !rule.resource.named() && !rule.pattern.is_empty() {
                return Err(invalid(format!(
                    "rules on {} have no match (it names nothing)",
                    rule.resource.as_str()
                )));
            }
            if rule.resource == Resource::Topic {
                if rule.pattern.is_empty() {
                    rule.pattern = ">".into();
                }
                if rule.pattern.split('.').any(str::is_empty) {
                    return Err(invalid(format!(
                        "topic pattern {:?} has an empty token",
                        rule.pattern
                    )));
                }
                if let Some(position) = rule.pattern.split('.').position(|t| t == ">") {
                    if position + 1 != rule.pattern.split('.').count() {
                        return Err(invalid(format!(
                            "in topic pattern {:?}, '>' may only be the last token",
                            rule.pattern
                        )));
                    }
                }
            }
        }
        self.name = name.to_string();
        Ok(self)
    }

    /// The built-in policy that allows everything.
    pub fn management() -> Policy {
        const ALL: [Resource; 10] = [
            Resource::Kv,
            Resource::Leases,
            Resource::Topic,
            Resource::QueueGroup,
            Resource::Kafka,
            Resource::Logs,
            Resource::Delivery,
            Resource::Workflows,
            Resource::Operator,
            Resource::Acl,
        ];
        Policy {
            name: MANAGEMENT_POLICY.into(),
            description: "Allows everything (built in).".into(),
            rules: ALL
                .into_iter()
                .map(|resource| Rule {
                    resource,
                    pattern: if resource == Resource::Topic {
                        ">".into()
                    } else {
                        String::new()
                    },
                    access: Access::Write,
                })
                .collect(),
        }
    }
}

impl Role {
    pub fn validate(mut self, name: &str) -> Result<Role, Invalid> {
        validate_name("role", name)?;
        validate_description(&self.description)?;
        validate_links("policy", &self.policies)?;
        self.name = name.to_string();
        Ok(self)
    }
}

/// What a client asks for when it creates a token.
#[derive(Clone, Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewToken {
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub policies: Vec<String>,
    #[serde(default)]
    pub roles: Vec<String>,
    /// Seconds from now after which the token is refused; none: never.
    #[serde(default)]
    pub expires_in_secs: Option<u64>,
}

impl NewToken {
    /// The token to store and its secret, shown once.
    pub fn issue(self, now_ms: u64) -> Result<(Token, String), Invalid> {
        validate_description(&self.description)?;
        validate_links("policy", &self.policies)?;
        validate_links("role", &self.roles)?;
        if self.policies.is_empty() && self.roles.is_empty() {
            return Err(invalid("a token needs at least one policy or role"));
        }
        let expires_at_ms = match self.expires_in_secs {
            Some(0) => return Err(invalid("expires_in_secs must be at least 1")),
            Some(secs) => Some(
                secs.checked_mul(1000)
                    .and_then(|ms| ms.checked_add(now_ms))
                    .ok_or_else(|| invalid("expires_in_secs is too large"))?,
            ),
            None => None,
        };
        let secret = new_secret();
        let token = Token {
            accessor_id: new_accessor_id(),
            secret_sha256: secret_hash(&secret),
            description: self.description,
            policies: self.policies,
            roles: self.roles,
            expires_at_ms,
            created_at_ms: now_ms,
        };
        Ok((token, secret))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies_are_checked() {
        let rule = |resource, pattern: &str| Rule {
            resource,
            pattern: pattern.into(),
            access: Access::Read,
        };
        let policy = |rules| Policy {
            name: String::new(),
            description: String::new(),
            rules,
        };
        assert!(policy(vec![rule(Resource::Kv, "app/")])
            .validate("p")
            .is_ok());
        let topic = policy(vec![rule(Resource::Topic, "")])
            .validate("p")
            .unwrap();
        assert_eq!(topic.rules[0].pattern, ">");
        for bad in [
            policy(vec![rule(Resource::Operator, "x")]),
            policy(vec![rule(Resource::Topic, "a.>.b")]),
            policy(vec![rule(Resource::Topic, "a..b")]),
        ] {
            assert!(bad.validate("p").is_err());
        }
        assert!(policy(vec![]).validate(MANAGEMENT_POLICY).is_err());
        assert!(policy(vec![]).validate("has space").is_err());
    }

    #[test]
    fn issued_tokens_keep_only_the_hash() {
        let (token, secret) = NewToken {
            policies: vec!["p".into()],
            ..NewToken::default()
        }
        .issue(1000)
        .unwrap();
        assert_eq!(token.secret_sha256, secret_hash(&secret));
        assert!(!serde_json::to_string(&token).unwrap().contains(&secret));
        assert!(NewToken::default().issue(0).is_err());
    }
}
