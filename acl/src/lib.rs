//! Access control for Shoal's API: tokens carry policies (directly or
//! through roles), policies are rules on resources, and every request is
//! checked against the rules of the token it carries. Tokens, roles and
//! policies are stored as JSON under `_shoal/acl/` in the replicated store,
//! the secrets only as SHA-256; each node keeps a copy ([`Acl`]) that
//! follows the store.

pub mod model;
pub mod rules;
pub mod state;

pub use model::{Invalid, NewToken, Policy, Role, Token};
pub use rules::{Access, Resource, Rule};
pub use state::{Acl, AuthError, Identity, TokenSummary};
