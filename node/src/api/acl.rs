//! `/v1/acl/...`: the one-time bootstrap, tokens, roles, policies and
//! `whoami`. Entries are stored as JSON under `_shoal/acl/` (tokens only
//! as the SHA-256 of their secret); every node follows them (see
//! `services::messaging::follow_config`).

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::de::DeserializeOwned;
use serde::Serialize;
use shoal_acl::model::{
    BOOTSTRAP_KEY, MANAGEMENT_POLICY, POLICIES_PREFIX, ROLES_PREFIX, TOKENS_PREFIX,
};
use shoal_acl::{NewToken, Policy, Role, Token, TokenSummary};
use shoal_storage::kv::{Compare, CompareOp, CompareTarget, Txn, TxnOp};
use utoipa::ToSchema;

use super::auth::Caller;
use super::error::{ApiError, ApiResult, ErrorBody, ErrorCode};
use super::extract::{JsonBody, PathText};
use crate::services::shoal::Shoal;

/// Most tokens, roles or policies listed at once.
const MAX_LISTED: usize = 10_000;

/// A token as the API shows it: never its secret or its hash.
#[derive(Serialize, ToSchema)]
pub struct TokenView {
    pub accessor_id: String,
    pub description: String,
    pub policies: Vec<String>,
    pub roles: Vec<String>,
    /// Unix milliseconds after which it is refused; null: never
    pub expires_at_ms: Option<u64>,
    pub created_at_ms: u64,
}

impl From<Token> for TokenView {
    fn from(token: Token) -> TokenView {
        TokenView {
            accessor_id: token.accessor_id,
            description: token.description,
            policies: token.policies,
            roles: token.roles,
            expires_at_ms: token.expires_at_ms,
            created_at_ms: token.created_at_ms,
        }
    }
}

/// A new token, with its secret: shown this once.
#[derive(Serialize, ToSchema)]
pub struct TokenCreated {
    /// Send as `Authorization: Bearer <secret>`; Shoal keeps only its hash
    pub secret: String,
    #[serde(flatten)]
    pub token: TokenView,
}

#[derive(Serialize, ToSchema)]
pub struct TokenList {
    pub tokens: Vec<TokenView>,
}

#[derive(Serialize, ToSchema)]
pub struct PolicyList {
    /// Every policy, the built-in `management` first
    pub policies: Vec<Policy>,
}

#[derive(Serialize, ToSchema)]
pub struct RoleList {
    pub roles: Vec<Role>,
}

/// Who the request's token is.
#[derive(Serialize, ToSchema)]
pub struct WhoAmI {
    /// Whether ACLs are on (`--acl`); when off, every request may do everything
    pub acl: bool,
    /// The token; null when ACLs are off
    pub token: Option<TokenSummary>,
}

#[derive(Serialize, ToSchema)]
pub struct AclDeleted {
    pub deleted: String,
}

fn not_found(what: &str, name: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        ErrorCode::NotFound,
        format!("{what} {name:?} does not exist"),
    )
}

fn invalid(e: shoal_acl::Invalid) -> ApiError {
    ApiError::bad_request(e.0)
}

fn check_name(what: &str, name: &str) -> ApiResult<()> {
    shoal_acl::model::validate_name(what, name).map_err(invalid)
}

/// Accessor ids are 32 lowercase hex digits.
fn check_accessor(accessor_id: &str) -> ApiResult<()> {
    if accessor_id.len() == 32
        && accessor_id
            .chars()
            .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
    {
        return Ok(());
    }
    Err(ApiError::bad_request(
        "an accessor id is 32 lowercase hex digits",
    ))
}

fn to_json(value: &impl Serialize) -> ApiResult<Vec<u8>> {
    serde_json::to_vec(value).map_err(|e| ApiError::internal(e.to_string()))
}

/// Longest a change waits for this node's copy of the ACL to apply it.
const APPLY_WAIT: Duration = Duration::from_secs(2);

/// Wait (a little) until this node's copy of the ACL has applied
/// `revision`, so that a token created here works here at once.
async fn applied(shoal: &Shoal, revision: u64) {
    let deadline = tokio::time::Instant::now() + APPLY_WAIT;
    while shoal.acl.revision() < revision && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn put_entry(shoal: &Shoal, key: String, value: Vec<u8>) -> ApiResult<()> {
    let (_, revision, _) = shoal
        .txn(Txn {
            compare: vec![],
            success: vec![TxnOp::Put {
                key,
                value,
                lease: 0,
            }],
            failure: vec![],
        })
        .await?;
    applied(shoal, revision).await;
    Ok(())
}

/// 400 unless every name exists under `prefix` (a linearizable read: a
/// policy created a moment ago on another node counts).
async fn check_exist(shoal: &Shoal, what: &str, prefix: &str, names: &[String]) -> ApiResult<()> {
    shoal.read_barrier(false).await?;
    for name in names {
        if what == "policy" && name == MANAGEMENT_POLICY {
            continue;
        }
        let key = format!("{prefix}{name}");
        let (_, kv) = shoal.read(move |store| store.kv_get(&key)).await?;
        if kv.is_none() {
            return Err(ApiError::bad_request(format!(
                "the {what} {name:?} does not exist"
            )));
        }
    }
    Ok(())
}

/// One stored entry (linearizable read).
async fn get_entry<T: DeserializeOwned + Send + 'static>(
    shoal: &Shoal,
    key: String,
) -> ApiResult<Option<T>> {
    shoal.read_barrier(false).await?;
    let (_, kv) = shoal.read(move |store| store.kv_get(&key)).await?;
    kv.map(|kv| serde_json::from_slice(&kv.value).map_err(|e| ApiError::internal(e.to_string())))
        .transpose()
}

/// Every stored entry under `prefix` (linearizable read).
async fn list_entries<T: DeserializeOwned>(
    shoal: &Shoal,
    prefix: &'static str,
) -> ApiResult<Vec<T>> {
    shoal.read_barrier(false).await?;
    let (_, kvs, _) = shoal
        .read(move |store| store.kv_range(prefix, None, MAX_LISTED))
        .await?;
    Ok(kvs
        .iter()
        .filter_map(|kv| serde_json::from_slice(&kv.value).ok())
        .collect())
}

async fn delete_entry(
    shoal: &Shoal,
    what: &str,
    key: String,
    name: String,
) -> ApiResult<Json<AclDeleted>> {
    let Some(revision) = shoal.delete_key(key).await? else {
        return Err(not_found(what, &name));
    };
    applied(shoal, revision).await;
    Ok(Json(AclDeleted { deleted: name }))
}

#[utoipa::path(
    post,
    path = "/v1/acl/bootstrap",
    tag = "acl",
    operation_id = "bootstrapAcl",
    summary = "Create the first management token (once per cluster)",
    description = "Creates a token with the built-in `management` policy and answers its secret. Needs no token, and works once: afterwards it answers 409. Needs ACLs on (`--acl`).",
    responses(
        (status = 200, description = "The management token, with its secret (shown only here).", body = TokenCreated),
        (status = 400, description = "ACLs are off. Error codes: `bad_request`.", body = ErrorBody),
        (status = 409, description = "The cluster was bootstrapped already. Error codes: `already_bootstrapped`.", body = ErrorBody),
        (status = 503, response = crate::api::doc::Unavailable),
        (status = 504, response = crate::api::doc::Timeout),
    )
)]
pub async fn bootstrap(State(shoal): State<Arc<Shoal>>) -> ApiResult<Json<TokenCreated>> {
    if !shoal.acl.enabled() {
        return Err(ApiError::bad_request(
            "ACLs are off on this node: start it with --acl",
        ));
    }
    let now = shoal_storage::now_ms();
    let (token, secret) = NewToken {
        description: "Bootstrap management token".into(),
        policies: vec![MANAGEMENT_POLICY.into()],
        ..NewToken::default()
    }
    .issue(now)
    .map_err(invalid)?;
    let marker = to_json(&serde_json::json!({"accessor_id": token.accessor_id, "at_ms": now}))?;
    let (succeeded, revision, _) = shoal
        .txn(Txn {
            compare: vec![Compare {
                key: BOOTSTRAP_KEY.into(),
                op: CompareOp::Equal,
                target: CompareTarget::CreateRevision(0),
            }],
            success: vec![
                TxnOp::Put {
                    key: BOOTSTRAP_KEY.into(),
                    value: marker,
                    lease: 0,
                },
                TxnOp::Put {
                    key: format!("{TOKENS_PREFIX}{}", token.accessor_id),
                    value: to_json(&token)?,
                    lease: 0,
                },
            ],
            failure: vec![],
        })
        .await?;
    if !succeeded {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            ErrorCode::AlreadyBootstrapped,
            "the ACL was bootstrapped already; ask a management token's holder for a token",
        ));
    }
    applied(&shoal, revision).await;
    tracing::warn!(accessor = %token.accessor_id, "ACL bootstrapped: a management token was created");
    Ok(Json(TokenCreated {
        secret,
        token: token.into(),
    }))
}

#[utoipa::path(
    get,
    path = "/v1/acl/whoami",
    tag = "acl",
    operation_id = "whoAmI",
    summary = "The request's token",
    responses((status = 200, description = "Whether ACLs are on, and the token.", body = WhoAmI))
)]
pub async fn whoami(caller: Caller, State(shoal): State<Arc<Shoal>>) -> Json<WhoAmI> {
    Json(WhoAmI {
        acl: shoal.acl.enabled(),
        token: caller.identity.token.as_deref().cloned(),
    })
}

#[utoipa::path(
    put,
    path = "/v1/acl/policies/{name}",
    tag = "acl",
    operation_id = "putPolicy",
    summary = "Create or replace a policy",
    description = "A policy is a list of rules `{resource, match, access}`: `resource` is one of `kv`, `leases`, `topic`, `kafka`, `logs`, `delivery`, `workflows`, `operator`, `acl`; `match` a name prefix (a NATS pattern for `topic`; empty: all); `access` `read`, `write` (includes read) or `deny` (wins over any grant it overlaps). At most 256 rules. Tokens using it see the change within a second, on every node.",
    params(("name" = String, Path, description = "1-128 letters, digits, '-', '_' or '.'; not `management`")),
    request_body(content = Policy, example = json!({"description": "orders service", "rules": [{"resource": "kv", "match": "config/orders/", "access": "read"}, {"resource": "topic", "match": "orders.>", "access": "write"}]})),
    responses(
        (status = 200, description = "The stored policy.", body = Policy),
        (status = 400, description = "Invalid name or rules. Error codes: `bad_request`.", body = ErrorBody),
        (status = 503, response = crate::api::doc::Unavailable),
        (status = 504, response = crate::api::doc::Timeout),
    )
)]
pub async fn put_policy(
    State(shoal): State<Arc<Shoal>>,
    PathText(name): PathText,
    JsonBody(policy): JsonBody<Policy>,
) -> ApiResult<Json<Policy>> {
    let policy = policy.validate(&name).map_err(invalid)?;
    put_entry(
        &shoal,
        format!("{POLICIES_PREFIX}{name}"),
        to_json(&policy)?,
    )
    .await?;
    Ok(Json(policy))
}

#[utoipa::path(
    get,
    path = "/v1/acl/policies/{name}",
    tag = "acl",
    operation_id = "getPolicy",
    summary = "Read a policy",
    params(("name" = String, Path, description = "The policy's name")),
    responses(
        (status = 200, description = "The policy.", body = Policy),
        (status = 400, description = "The name is not 1-128 letters, digits, '-', '_' or '.'. Error codes: `bad_request`.", body = ErrorBody),
        (status = 404, description = "No such policy. Error codes: `not_found`.", body = ErrorBody),
        (status = 503, response = crate::api::doc::Unavailable),
    )
)]
pub async fn get_policy(
    State(shoal): State<Arc<Shoal>>,
    PathText(name): PathText,
) -> ApiResult<Json<Policy>> {
    check_name("policy", &name)?;
    if name == MANAGEMENT_POLICY {
        return Ok(Json(Policy::management()));
    }
    get_entry(&shoal, format!("{POLICIES_PREFIX}{name}"))
        .await?
        .map(Json)
        .ok_or_else(|| not_found("policy", &name))
}

#[utoipa::path(
    get,
    path = "/v1/acl/policies",
    tag = "acl",
    operation_id = "listPolicies",
    summary = "List policies",
    responses(
        (status = 200, description = "Every policy.", body = PolicyList),
        (status = 503, response = crate::api::doc::Unavailable),
    )
)]
pub async fn list_policies(State(shoal): State<Arc<Shoal>>) -> ApiResult<Json<PolicyList>> {
    let mut policies = vec![Policy::management()];
    policies.extend(list_entries::<Policy>(&shoal, POLICIES_PREFIX).await?);
    Ok(Json(PolicyList { policies }))
}

#[utoipa::path(
    delete,
    path = "/v1/acl/policies/{name}",
    tag = "acl",
    operation_id = "deletePolicy",
    summary = "Delete a policy",
    description = "Tokens and roles that name it lose its rules (within a second, on every node).",
    params(("name" = String, Path, description = "The policy's name")),
    responses(
        (status = 200, description = "Deleted.", body = AclDeleted),
        (status = 400, description = "The built-in policy, or a name that is not 1-128 letters, digits, '-', '_' or '.'. Error codes: `bad_request`.", body = ErrorBody),
        (status = 404, description = "No such policy. Error codes: `not_found`.", body = ErrorBody),
        (status = 503, response = crate::api::doc::Unavailable),
    )
)]
pub async fn delete_policy(
    State(shoal): State<Arc<Shoal>>,
    PathText(name): PathText,
) -> ApiResult<Json<AclDeleted>> {
    check_name("policy", &name)?;
    if name == MANAGEMENT_POLICY {
        return Err(ApiError::bad_request(
            "the management policy is built in and cannot be deleted",
        ));
    }
    delete_entry(&shoal, "policy", format!("{POLICIES_PREFIX}{name}"), name).await
}

#[utoipa::path(
    put,
    path = "/v1/acl/roles/{name}",
    tag = "acl",
    operation_id = "putRole",
    summary = "Create or replace a role",
    description = "A role groups policies; tokens carry roles. The policies must exist.",
    params(("name" = String, Path, description = "1-128 letters, digits, '-', '_' or '.'")),
    request_body(content = Role, example = json!({"description": "order services", "policies": ["orders"]})),
    responses(
        (status = 200, description = "The stored role.", body = Role),
        (status = 400, description = "Invalid name, or a policy that does not exist. Error codes: `bad_request`.", body = ErrorBody),
        (status = 503, response = crate::api::doc::Unavailable),
        (status = 504, response = crate::api::doc::Timeout),
    )
)]
pub async fn put_role(
    State(shoal): State<Arc<Shoal>>,
    PathText(name): PathText,
    JsonBody(role): JsonBody<Role>,
) -> ApiResult<Json<Role>> {
    let role = role.validate(&name).map_err(invalid)?;
    check_exist(&shoal, "policy", POLICIES_PREFIX, &role.policies).await?;
    put_entry(&shoal, format!("{ROLES_PREFIX}{name}"), to_json(&role)?).await?;
    Ok(Json(role))
}

#[utoipa::path(
    get,
    path = "/v1/acl/roles/{name}",
    tag = "acl",
    operation_id = "getRole",
    summary = "Read a role",
    params(("name" = String, Path, description = "The role's name")),
    responses(
        (status = 200, description = "The role.", body = Role),
        (status = 400, description = "The name is not 1-128 letters, digits, '-', '_' or '.'. Error codes: `bad_request`.", body = ErrorBody),
        (status = 404, description = "No such role. Error codes: `not_found`.", body = ErrorBody),
        (status = 503, response = crate::api::doc::Unavailable),
    )
)]
pub async fn get_role(
    State(shoal): State<Arc<Shoal>>,
    PathText(name): PathText,
) -> ApiResult<Json<Role>> {
    check_name("role", &name)?;
    get_entry(&shoal, format!("{ROLES_PREFIX}{name}"))
        .await?
        .map(Json)
        .ok_or_else(|| not_found("role", &name))
}

#[utoipa::path(
    get,
    path = "/v1/acl/roles",
    tag = "acl",
    operation_id = "listRoles",
    summary = "List roles",
    responses(
        (status = 200, description = "Every role.", body = RoleList),
        (status = 503, response = crate::api::doc::Unavailable),
    )
)]
pub async fn list_roles(State(shoal): State<Arc<Shoal>>) -> ApiResult<Json<RoleList>> {
    Ok(Json(RoleList {
        roles: list_entries(&shoal, ROLES_PREFIX).await?,
    }))
}

#[utoipa::path(
    delete,
    path = "/v1/acl/roles/{name}",
    tag = "acl",
    operation_id = "deleteRole",
    summary = "Delete a role",
    params(("name" = String, Path, description = "The role's name")),
    responses(
        (status = 200, description = "Deleted.", body = AclDeleted),
        (status = 400, description = "The name is not 1-128 letters, digits, '-', '_' or '.'. Error codes: `bad_request`.", body = ErrorBody),
        (status = 404, description = "No such role. Error codes: `not_found`.", body = ErrorBody),
        (status = 503, response = crate::api::doc::Unavailable),
    )
)]
pub async fn delete_role(
    State(shoal): State<Arc<Shoal>>,
    PathText(name): PathText,
) -> ApiResult<Json<AclDeleted>> {
    check_name("role", &name)?;
    delete_entry(&shoal, "role", format!("{ROLES_PREFIX}{name}"), name).await
}

#[utoipa::path(
    post,
    path = "/v1/acl/tokens",
    tag = "acl",
    operation_id = "createToken",
    summary = "Create a token",
    description = "A token carries policies and roles (which must exist), a description and an optional expiry. The answer holds its secret, which Shoal does not keep (only its SHA-256): it cannot be shown again. Usable on every node within a second.",
    request_body(content = NewToken, example = json!({"description": "orders service", "roles": ["orders"], "expires_in_secs": 86400})),
    responses(
        (status = 200, description = "The token with its secret.", body = TokenCreated),
        (status = 400, description = "Invalid fields, or a policy or role that does not exist. Error codes: `bad_request`.", body = ErrorBody),
        (status = 503, response = crate::api::doc::Unavailable),
        (status = 504, response = crate::api::doc::Timeout),
    )
)]
pub async fn create_token(
    State(shoal): State<Arc<Shoal>>,
    JsonBody(new): JsonBody<NewToken>,
) -> ApiResult<Json<TokenCreated>> {
    check_exist(&shoal, "policy", POLICIES_PREFIX, &new.policies).await?;
    check_exist(&shoal, "role", ROLES_PREFIX, &new.roles).await?;
    let (token, secret) = new.issue(shoal_storage::now_ms()).map_err(invalid)?;
    put_entry(
        &shoal,
        format!("{TOKENS_PREFIX}{}", token.accessor_id),
        to_json(&token)?,
    )
    .await?;
    tracing::info!(accessor = %token.accessor_id, "token created");
    Ok(Json(TokenCreated {
        secret,
        token: token.into(),
    }))
}

#[utoipa::path(
    get,
    path = "/v1/acl/tokens/{accessor_id}",
    tag = "acl",
    operation_id = "getToken",
    summary = "Read a token (without its secret)",
    params(("accessor_id" = String, Path, description = "The token's accessor id")),
    responses(
        (status = 200, description = "The token.", body = TokenView),
        (status = 400, description = "The accessor id is not 32 lowercase hex digits. Error codes: `bad_request`.", body = ErrorBody),
        (status = 404, description = "No such token. Error codes: `not_found`.", body = ErrorBody),
        (status = 503, response = crate::api::doc::Unavailable),
    )
)]
pub async fn get_token(
    State(shoal): State<Arc<Shoal>>,
    PathText(accessor_id): PathText,
) -> ApiResult<Json<TokenView>> {
    check_accessor(&accessor_id)?;
    get_entry::<Token>(&shoal, format!("{TOKENS_PREFIX}{accessor_id}"))
        .await?
        .map(|token| Json(token.into()))
        .ok_or_else(|| not_found("token", &accessor_id))
}

#[utoipa::path(
    get,
    path = "/v1/acl/tokens",
    tag = "acl",
    operation_id = "listTokens",
    summary = "List tokens (without secrets)",
    responses(
        (status = 200, description = "Every token.", body = TokenList),
        (status = 503, response = crate::api::doc::Unavailable),
    )
)]
pub async fn list_tokens(State(shoal): State<Arc<Shoal>>) -> ApiResult<Json<TokenList>> {
    let tokens = list_entries::<Token>(&shoal, TOKENS_PREFIX).await?;
    Ok(Json(TokenList {
        tokens: tokens.into_iter().map(TokenView::from).collect(),
    }))
}

#[utoipa::path(
    delete,
    path = "/v1/acl/tokens/{accessor_id}",
    tag = "acl",
    operation_id = "deleteToken",
    summary = "Delete (revoke) a token",
    description = "Every node refuses the token within a second.",
    params(("accessor_id" = String, Path, description = "The token's accessor id")),
    responses(
        (status = 200, description = "Deleted.", body = AclDeleted),
        (status = 400, description = "The accessor id is not 32 lowercase hex digits. Error codes: `bad_request`.", body = ErrorBody),
        (status = 404, description = "No such token. Error codes: `not_found`.", body = ErrorBody),
        (status = 503, response = crate::api::doc::Unavailable),
    )
)]
pub async fn delete_token(
    State(shoal): State<Arc<Shoal>>,
    PathText(accessor_id): PathText,
) -> ApiResult<Json<AclDeleted>> {
    check_accessor(&accessor_id)?;
    tracing::info!(accessor = %accessor_id, "token deleted");
    delete_entry(
        &shoal,
        "token",
        format!("{TOKENS_PREFIX}{accessor_id}"),
        accessor_id,
    )
    .await
}
