//! The node's copy of the ACL (kept current from the replicated store) and
//! how a request's secret becomes an [`Identity`].

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use serde::Serialize;
use utoipa::ToSchema;

use crate::model::{
    secret_hash, Policy, Role, Token, MANAGEMENT_POLICY, POLICIES_PREFIX, ROLES_PREFIX,
    TOKENS_PREFIX,
};
use crate::rules::{allows, Access, Resource, Rule};

/// Why a request has no identity. The texts are for clients.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum AuthError {
    #[error("this request needs a token: send Authorization: Bearer <token>")]
    Missing,
    #[error("the token is not known (or was deleted)")]
    Unknown,
    #[error("the token expired")]
    Expired,
}

/// Who a request acts as, and what it may do.
#[derive(Clone, Debug)]
pub struct Identity {
    /// `None` when ACLs are off (everything is allowed).
    pub token: Option<Arc<TokenSummary>>,
    rules: Arc<Vec<Rule>>,
    everything: bool,
}

/// What `GET /v1/acl/whoami` shows of a token.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct TokenSummary {
    pub accessor_id: String,
    pub description: String,
    pub policies: Vec<String>,
    pub roles: Vec<String>,
    pub expires_at_ms: Option<u64>,
}

impl Identity {
    /// Everything allowed: ACLs are off.
    pub fn unrestricted() -> Identity {
        Identity {
            token: None,
            rules: Arc::new(Vec::new()),
            everything: true,
        }
    }

    /// Whether this identity may do `access` on the one thing `name`.
    /// Nothing allowed: a request without a valid token on an open route.
    pub fn anonymous() -> Identity {
        Identity {
            token: None,
            rules: Arc::new(Vec::new()),
            everything: false,
        }
    }

    pub fn allows(&self, resource: Resource, name: &str, access: Access) -> bool {
        self.everything || allows(&self.rules, resource, name, false, access)
    }

    /// Whether this identity may do `access` on everything whose name
    /// starts with `prefix`.
    pub fn allows_under(&self, resource: Resource, prefix: &str, access: Access) -> bool {
        self.everything || allows(&self.rules, resource, prefix, true, access)
    }

    /// Whether some rule lets this identity do `access` on some thing of
    /// this kind (the handler then narrows what it does to those things).
    pub fn allows_some(&self, resource: Resource, access: Access) -> bool {
        self.everything
            || self.rules.iter().any(|rule| {
                rule.resource == resource
                    && (rule.access == Access::Write
                        || (rule.access == Access::Read && access == Access::Read))
            })
    }

    /// The accessor id, for logs and the audit trail.
    pub fn accessor(&self) -> &str {
        self.token
            .as_ref()
            .map(|token| token.accessor_id.as_str())
            .unwrap_or("anonymous")
    }
}

/// Everything under `_shoal/acl/`, as this replica has applied it.
#[derive(Default, Debug)]
struct Stored {
    /// Bumped by every change: identities resolved before it are stale.
    generation: u64,
    policies: BTreeMap<String, Policy>,
    roles: BTreeMap<String, Role>,
    tokens: BTreeMap<String, Token>,
    /// Secret hash → accessor id.
    by_hash: HashMap<String, String>,
}

impl Stored {
    fn apply(&mut self, key: &str, value: Option<&[u8]>) {
        self.generation += 1;
        fn parse<T: serde::de::DeserializeOwned>(key: &str, value: &[u8]) -> Option<T> {
            serde_json::from_slice(value)
                .map_err(|e| tracing::warn!(key, error = %e, "ignoring an unreadable ACL entry"))
                .ok()
        }
        if let Some(name) = key.strip_prefix(POLICIES_PREFIX) {
            match value.and_then(|v| parse(key, v)) {
                Some(policy) => self.policies.insert(name.to_string(), policy),
                None => self.policies.remove(name),
            };
        } else if let Some(name) = key.strip_prefix(ROLES_PREFIX) {
            match value.and_then(|v| parse(key, v)) {
                Some(role) => self.roles.insert(name.to_string(), role),
                None => self.roles.remove(name),
            };
        } else if let Some(accessor) = key.strip_prefix(TOKENS_PREFIX) {
            if let Some(old) = self.tokens.remove(accessor) {
                self.by_hash.remove(&old.secret_sha256);
            }
            if let Some(token) = value.and_then(|v| parse::<Token>(key, v)) {
                self.by_hash
                    .insert(token.secret_sha256.clone(), accessor.to_string());
                self.tokens.insert(accessor.to_string(), token);
            }
        }
    }

    /// The identity of the token whose secret hashes to `hash`.
    fn resolve(&self, hash: &str) -> Option<Identity> {
        let token = self
            .by_hash
            .get(hash)
            .and_then(|accessor| self.tokens.get(accessor))?;
        let (rules, everything) = self.rules_of(&token.policies, &token.roles);
        Some(Identity {
            token: Some(Arc::new(TokenSummary {
                accessor_id: token.accessor_id.clone(),
                description: token.description.clone(),
                policies: token.policies.clone(),
                roles: token.roles.clone(),
                expires_at_ms: token.expires_at_ms,
            })),
            rules: Arc::new(rules),
            everything,
        })
    }

    /// The rules of these policies and of these roles' policies. Names
    /// that do not exist (deleted since) add nothing.
    fn rules_of(&self, policies: &[String], roles: &[String]) -> (Vec<Rule>, bool) {
        let role_policies = roles
            .iter()
            .filter_map(|role| self.roles.get(role))
            .flat_map(|role| role.policies.iter());
        let mut rules = Vec::new();
        for name in policies.iter().chain(role_policies) {
            if name == MANAGEMENT_POLICY {
                return (Vec::new(), true);
            }
            if let Some(policy) = self.policies.get(name) {
                rules.extend(policy.rules.iter().cloned());
            }
        }
        (rules, false)
    }
}

/// The node's ACL: whether it is on, and the replica's tokens, roles and
/// policies. Cheap to share.
#[derive(Debug)]
pub struct Acl {
    enabled: bool,
    /// The store revision this copy reflects.
    revision: AtomicU64,
    /// SHA-256 of the `--initial-management-token-file` secret.
    initial_management: Option<String>,
    stored: RwLock<Stored>,
    /// Identities already resolved, by secret hash, with the generation of
    /// `stored` they were resolved from (so a request does not rebuild its
    /// token's rules).
    resolved: Mutex<HashMap<String, (u64, Identity)>>,
}

/// Most resolved identities kept; past it the cache starts over.
const MAX_RESOLVED: usize = 10_000;

impl Acl {
    pub fn new(enabled: bool, initial_management_secret: Option<&str>) -> Acl {
        Acl {
            enabled,
            revision: AtomicU64::new(0),
            initial_management: initial_management_secret.map(secret_hash),
            stored: RwLock::new(Stored::default()),
            resolved: Mutex::new(HashMap::new()),
        }
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Stored> {
        // A panic while holding the lock left whole entries behind: the data is usable.
        self.stored.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Stored> {
        self.stored.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Replace everything with the entries read from the store at
    /// `revision` (keys under `_shoal/` that are not ACL entries are
    /// ignored).
    pub fn replace(&self, entries: &[(String, Option<Vec<u8>>)], revision: u64) {
        let mut guard = self.write();
        let mut stored = Stored {
            generation: guard.generation,
            ..Stored::default()
        };
        for (key, value) in entries {
            stored.apply(key, value.as_deref());
        }
        stored.generation += 1;
        *guard = stored;
        self.revision.store(revision, Ordering::Release);
    }

    /// Apply changes as the store applied them, up to `revision`.
    pub fn apply(&self, changes: &[(String, Option<Vec<u8>>)], revision: u64) {
        let mut stored = self.write();
        for (key, value) in changes {
            stored.apply(key, value.as_deref());
        }
        self.revision.fetch_max(revision, Ordering::Release);
    }

    /// The store revision this copy reflects.
    pub fn revision(&self) -> u64 {
        self.revision.load(Ordering::Acquire)
    }

    /// Who `secret` is (None: no credentials were sent). With ACLs off,
    /// everyone may do everything.
    pub fn authenticate(&self, secret: Option<&str>, now_ms: u64) -> Result<Identity, AuthError> {
        if !self.enabled {
            return Ok(Identity::unrestricted());
        }
        let secret = secret.ok_or(AuthError::Missing)?;
        let hash = secret_hash(secret);
        if self.initial_management.as_deref() == Some(hash.as_str()) {
            return Ok(Identity {
                token: Some(Arc::new(TokenSummary {
                    accessor_id: "initial-management".into(),
                    description: "--initial-management-token-file".into(),
                    policies: vec![MANAGEMENT_POLICY.into()],
                    roles: Vec::new(),
                    expires_at_ms: None,
                })),
                rules: Arc::new(Vec::new()),
                everything: true,
            });
        }
        let stored = self.read();
        let cached = self
            .cache()
            .get(&hash)
            .filter(|(generation, _)| *generation == stored.generation)
            .map(|(_, identity)| identity.clone());
        let identity = match cached {
            Some(identity) => identity,
            None => {
                let identity = stored.resolve(&hash).ok_or(AuthError::Unknown)?;
                let mut cache = self.cache();
                if cache.len() >= MAX_RESOLVED {
                    cache.clear();
                }
                cache.insert(hash, (stored.generation, identity.clone()));
                identity
            }
        };
        let expires = identity.token.as_ref().and_then(|t| t.expires_at_ms);
        if expires.is_some_and(|at| at <= now_ms) {
            return Err(AuthError::Expired);
        }
        Ok(identity)
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, HashMap<String, (u64, Identity)>> {
        // Entries are inserted whole; a panic elsewhere leaves them usable.
        self.resolved.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::NewToken;

    fn entry(key: &str, value: &impl Serialize) -> (String, Option<Vec<u8>>) {
        (key.to_string(), Some(serde_json::to_vec(value).unwrap()))
    }

    #[test]
    fn tokens_resolve_through_roles_and_stop_working_when_deleted_or_expired() {
        let acl = Acl::new(true, None);
        let policy = Policy {
            name: "reader".into(),
            description: String::new(),
            rules: vec![Rule {
                resource: Resource::Kv,
                pattern: "app/".into(),
                access: Access::Read,
            }],
        };
        let role = Role {
            name: "readers".into(),
            description: String::new(),
            policies: vec!["reader".into()],
        };
        let (token, secret) = NewToken {
            roles: vec!["readers".into()],
            expires_in_secs: Some(10),
            ..NewToken::default()
        }
        .issue(1_000)
        .unwrap();
        let token_key = format!("{TOKENS_PREFIX}{}", token.accessor_id);
        acl.replace(
            &[
                entry(&format!("{POLICIES_PREFIX}reader"), &policy),
                entry(&format!("{ROLES_PREFIX}readers"), &role),
                entry(&token_key, &token),
            ],
            3,
        );
        let identity = acl.authenticate(Some(&secret), 2_000).unwrap();
        assert!(identity.allows(Resource::Kv, "app/x", Access::Read));
        assert!(!identity.allows(Resource::Kv, "app/x", Access::Write));
        assert_eq!(
            acl.authenticate(Some(&secret), 11_000).unwrap_err(),
            AuthError::Expired
        );
        assert_eq!(
            acl.authenticate(Some("nope"), 2_000).unwrap_err(),
            AuthError::Unknown
        );
        assert_eq!(
            acl.authenticate(None, 2_000).unwrap_err(),
            AuthError::Missing
        );
        acl.apply(&[(token_key, None)], 4);
        assert_eq!(acl.revision(), 4);
        assert_eq!(
            acl.authenticate(Some(&secret), 2_000).unwrap_err(),
            AuthError::Unknown
        );
    }

    #[test]
    fn a_changed_policy_applies_to_tokens_already_seen() {
        let acl = Acl::new(true, None);
        let policy = |access| Policy {
            name: "p".into(),
            description: String::new(),
            rules: vec![Rule {
                resource: Resource::Kv,
                pattern: String::new(),
                access,
            }],
        };
        let (token, secret) = NewToken {
            policies: vec!["p".into()],
            ..NewToken::default()
        }
        .issue(0)
        .unwrap();
        let policy_key = format!("{POLICIES_PREFIX}p");
        acl.replace(
            &[
                entry(&policy_key, &policy(Access::Read)),
                entry(&format!("{TOKENS_PREFIX}{}", token.accessor_id), &token),
            ],
            1,
        );
        let before = acl.authenticate(Some(&secret), 0).unwrap();
        assert!(!before.allows(Resource::Kv, "k", Access::Write));
        acl.apply(&[entry(&policy_key, &policy(Access::Write))], 2);
        let after = acl.authenticate(Some(&secret), 0).unwrap();
        assert!(after.allows(Resource::Kv, "k", Access::Write));
        acl.apply(&[(policy_key, None)], 3);
        let gone = acl.authenticate(Some(&secret), 0).unwrap();
        assert!(!gone.allows(Resource::Kv, "k", Access::Read));
    }

    #[test]
    fn with_acls_off_everything_is_allowed() {
        let identity = Acl::new(false, None).authenticate(None, 0).unwrap();
        assert!(identity.allows(Resource::Acl, "", Access::Write));
    }

    #[test]
    fn the_initial_management_secret_allows_everything() {
        let acl = Acl::new(true, Some("s3cret"));
        let identity = acl.authenticate(Some("s3cret"), 0).unwrap();
        assert!(identity.allows(Resource::Acl, "", Access::Write));
    }
}
