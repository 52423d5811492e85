//! The node's id: given by `--node-id`, or made up on the first start and
//! kept in DATA_DIR/node-id.

use anyhow::{bail, Context};

use super::Settings;

/// A node's id, and whether it was made up on this start.
pub struct NodeIdentity {
    pub id: u64,
    /// No id was given and none was stored: a new identity, never a member
    /// of any cluster before.
    pub generated: bool,
}

/// The node id: given, or kept in DATA_DIR/node-id (created on first start).
pub fn node_id(settings: &Settings) -> anyhow::Result<NodeIdentity> {
    let path = settings.data_dir.join("node-id");
    let stored = match std::fs::read_to_string(&path) {
        Ok(text) => Some(
            text.trim()
                .parse::<u64>()
                .with_context(|| format!("bad node id in {}", path.display()))?,
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let id = match (settings.node_id, stored) {
        (Some(given), Some(stored)) if given != stored => {
            bail!(
                "--node-id {given} but {} holds node {stored}; use another --data-dir",
                settings.data_dir.display()
            )
        }
        (_, Some(stored)) => {
            return Ok(NodeIdentity {
                id: stored,
                generated: false,
            })
        }
        (Some(given), None) => NodeIdentity {
            id: given,
            generated: false,
        },
        // Below 2^53 so the id survives JSON clients that use doubles.
        (None, None) => NodeIdentity {
            id: rand::random_range(1..(1u64 << 53)),
            generated: true,
        },
    };
    // Durable before the node uses it: a node id lost after the node
    // joined would make it start again as a stranger to its own data.
    shoal_durable::replace_file(&path, format!("{}\n", id.id).as_bytes())
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(id)
}
