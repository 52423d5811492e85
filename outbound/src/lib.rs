//! Requests to URLs that users supply (webhooks, workflow `call`s).
//!
//! A node must not become a way into the networks it sits on: by default
//! such requests may not reach loopback, link-local (cloud metadata),
//! private or otherwise special addresses. [`Policy`] says which addresses
//! are refused and what an operator allowed (`--outbound-allow`);
//! [`Outbound`] is the one HTTP client for these requests and applies the
//! policy to the URL, to every address DNS gives for it, and to every
//! redirect.

mod client;
mod policy;

pub use client::{failure, refusal, ClientError, Outbound, OutboundError};
pub use policy::{Policy, PolicyError, Refusal};
