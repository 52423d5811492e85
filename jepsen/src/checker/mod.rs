//! Checkers: linearizability of registers (Wing–Gong), set membership (no
//! lost or phantom elements), watch delivery (exactly once, in order),
//! leases (kept-alive leases live, abandoned ones expire), and replica
//! convergence (identical state digests).

pub mod digest;
pub mod lease;
pub mod register;
pub mod set;
pub mod watch;
pub mod wgl;
