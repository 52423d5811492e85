//! Checkers: linearizability of registers (Wing–Gong), set membership (no
//! lost or phantom elements), and watch delivery (exactly once, in order).

pub mod register;
pub mod set;
pub mod watch;
pub mod wgl;
