//! Checkers: linearizability of registers (Wing–Gong), set membership (no
//! lost or phantom elements), watch delivery (exactly once, in order),
//! leases (kept-alive leases live, abandoned ones expire), workflows
//! (every instance completes once, its timer fires once, its event is
//! applied once), and replica convergence (identical state digests).

pub mod digest;
pub mod lease;
pub mod register;
pub mod set;
pub mod watch;
pub mod wgl;
pub mod workflow;
