//! The test network: one network namespace per node, each joined to a bridge
//! in the root namespace by a veth pair, on 10.77.0.0/24 (addresses that
//! exist only inside these namespaces and on the bridge we create).
//!
//! ```text
//!   root namespace (harness, clients)       node namespaces
//!   shjbr-<rid> 10.77.0.1/24 ──veth── eth0 10.77.0.11   shoal-j<rid>-0
//!                            ──veth── eth0 10.77.0.12   shoal-j<rid>-1  ...
//! ```
//!
//! Partitions drop packets in the node namespaces: node A's INPUT chain drops
//! everything whose source is a node A must not hear from (and vice versa),
//! which cuts both gossip (UDP) and RPC (TCP) — established connections too,
//! since no conntrack rule lets them through. The harness at 10.77.0.1 is never
//! cut off. Healing replaces every INPUT chain with an empty one.
//!
//! All names carry the run id, so stale leftovers are recognisable:
//! namespaces `shoal-j*`, links `shj*`. [`cleanup_all`] removes them.

use std::collections::BTreeSet;
use std::io::Write;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

/// Prefix of every namespace we create.
pub const NS_PREFIX: &str = "shoal-j";
/// Prefix of every link (bridge, host-side veth) we create.
pub const LINK_PREFIX: &str = "shj";
/// The bridge's address in the root namespace: the harness's source address.
pub const HOST_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
const PREFIX_LEN: u8 = 24;

/// Address of node `i`.
pub fn node_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 77, 0, 11 + i as u8)
}

/// Runs a command, failing with its stderr if it exits non-zero.
pub fn run(program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {program}"))?;
    if !out.status.success() {
        bail!(
            "`{program} {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs a command with `input` on its stdin.
fn run_with_input(program: &str, args: &[&str], input: &str) -> Result<()> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {program}"))?;
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(input.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "`{program} {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// The network of one run. Dropping it tears everything down.
pub struct Net {
    pub run_id: String,
    pub nodes: usize,
    bridge: String,
    namespaces: Vec<String>,
    torn_down: bool,
}

impl Net {
    pub fn ns_name(run_id: &str, i: usize) -> String {
        format!("{NS_PREFIX}{run_id}-{i}")
    }

    /// Checks that we can build namespaces at all, with a clear error if not.
    pub fn preflight() -> Result<()> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            bail!(
                "shoal-jepsen must run as root: it creates network namespaces, veth pairs and \
                 iptables rules to cut traffic between nodes (try `sudo`)"
            );
        }
        for tool in ["ip", "iptables", "iptables-restore"] {
            if Command::new(tool)
                .arg("--version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_err()
            {
                bail!("`{tool}` is not installed (Debian: apt-get install -y iproute2 iptables)");
            }
        }
        // Someone else's network on our subnet (a stale run, or a concurrent one)?
        let addrs = run("ip", &["-o", "-4", "addr", "show"])?;
        if let Some(line) = addrs.lines().find(|l| l.contains(&format!(" {HOST_IP}/"))) {
            bail!(
                "{HOST_IP} is already configured ({}); another shoal-jepsen run is active or a \
                 previous one was killed: run `shoal-jepsen cleanup`",
                line.split_whitespace().nth(1).unwrap_or("?")
            );
        }
        Ok(())
    }

    /// Creates the bridge and `nodes` namespaces. On error, removes whatever it
    /// had created.
    pub fn create(run_id: &str, nodes: usize) -> Result<Net> {
        Net::preflight()?;
        let mut net = Net {
            run_id: run_id.to_string(),
            nodes,
            bridge: format!("{LINK_PREFIX}br-{run_id}"),
            namespaces: Vec::new(),
            torn_down: false,
        };
        net.build()
            .context("creating the test network (namespaces, bridge, veth pairs)")?;
        Ok(net)
    }

    fn build(&mut self) -> Result<()> {
        let br = self.bridge.clone();
        run("ip", &["link", "add", &br, "type", "bridge"])?;
        run(
            "ip",
            &[
                "addr",
                "add",
                &format!("{HOST_IP}/{PREFIX_LEN}"),
                "dev",
                &br,
            ],
        )?;
        run("ip", &["link", "set", &br, "up"])?;
        for i in 0..self.nodes {
            let ns = Net::ns_name(&self.run_id, i);
            run("ip", &["netns", "add", &ns])?;
            self.namespaces.push(ns.clone());
            let host_end = format!("{LINK_PREFIX}{}v{i}", self.run_id);
            run(
                "ip",
                &[
                    "link", "add", &host_end, "type", "veth", "peer", "name", "eth0", "netns", &ns,
                ],
            )?;
            run("ip", &["link", "set", &host_end, "master", &br, "up"])?;
            run(
                "ip",
                &[
                    "-n",
                    &ns,
                    "addr",
                    "add",
                    &format!("{}/{PREFIX_LEN}", node_ip(i)),
                    "dev",
                    "eth0",
                ],
            )?;
            run("ip", &["-n", &ns, "link", "set", "eth0", "up"])?;
            run("ip", &["-n", &ns, "link", "set", "lo", "up"])?;
        }
        self.heal()?;
        Ok(())
    }

    /// Drops traffic so that node `i` hears nothing from any node in
    /// `grudge[i]`. Pass symmetric grudges for a clean partition.
    pub fn partition(&self, grudge: &[BTreeSet<usize>]) -> Result<()> {
        for (i, ns) in self.namespaces.iter().enumerate() {
            let mut rules = String::from(
                "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n",
            );
            for j in grudge.get(i).into_iter().flatten() {
                rules.push_str(&format!("-A INPUT -s {} -j DROP\n", node_ip(*j)));
            }
            rules.push_str("COMMIT\n");
            run_with_input("ip", &["netns", "exec", ns, "iptables-restore"], &rules)
                .with_context(|| format!("setting the partition rules in {ns}"))?;
        }
        Ok(())
    }

    /// Removes every partition.
    pub fn heal(&self) -> Result<()> {
        self.partition(&vec![BTreeSet::new(); self.nodes])
    }

    /// Kills whatever still runs in our namespaces, deletes them and the
    /// bridge. Idempotent; errors are printed, not returned.
    pub fn teardown(&mut self) {
        if self.torn_down {
            return;
        }
        self.torn_down = true;
        for ns in &self.namespaces {
            remove_namespace(ns);
        }
        // Namespaces die asynchronously; delete the veth pairs now.
        for i in 0..self.namespaces.len() {
            let _ = run(
                "ip",
                &["link", "del", &format!("{LINK_PREFIX}{}v{i}", self.run_id)],
            );
        }
        let _ = run("ip", &["link", "del", &self.bridge]);
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        self.teardown();
    }
}

/// Kills the processes in namespace `ns` (only processes we started live
/// there) and deletes it; its veth pair goes with it.
fn remove_namespace(ns: &str) {
    if let Ok(pids) = run("ip", &["netns", "pids", ns]) {
        for pid in pids
            .split_whitespace()
            .filter_map(|p| p.parse::<i32>().ok())
        {
            // SAFETY: plain kill(2) on a pid listed as living in our namespace.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
    }
    if let Err(e) = run("ip", &["netns", "del", ns]) {
        eprintln!("cleanup: {e}");
    }
}

/// `shoal-jepsen cleanup`: removes every namespace and link any run left
/// behind (names starting with `shoal-j` / `shj`), killing processes inside.
pub fn cleanup_all() -> Result<Vec<String>> {
    let mut removed = Vec::new();
    let list = run("ip", &["netns", "list"])?;
    for line in list.lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        if name.starts_with(NS_PREFIX) {
            remove_namespace(name);
            removed.push(format!("netns {name}"));
        }
    }
    let links = run("ip", &["-o", "link", "show"])?;
    for line in links.lines() {
        // "12: shjbr-ab12cd: <BROADCAST,...>" or "13: shjab12cdv0@if2: ..."
        let Some(name) = line.split(':').nth(1).map(str::trim) else {
            continue;
        };
        let name = name.split('@').next().unwrap_or(name);
        if name.starts_with(LINK_PREFIX) {
            if let Err(e) = run("ip", &["link", "del", name]) {
                eprintln!("cleanup: {e}");
            } else {
                removed.push(format!("link {name}"));
            }
        }
    }
    Ok(removed)
}

/// Removes the namespaces and links of one run (for ctrl-c).
pub fn cleanup_run(run_id: &str) {
    if let Ok(list) = run("ip", &["netns", "list"]) {
        let prefix = format!("{NS_PREFIX}{run_id}-");
        for name in list.lines().filter_map(|l| l.split_whitespace().next()) {
            if name.starts_with(&prefix) {
                remove_namespace(name);
            }
        }
    }
    if let Ok(links) = run("ip", &["-o", "link", "show"]) {
        let prefix = format!("{LINK_PREFIX}{run_id}v");
        for line in links.lines() {
            let Some(name) = line.split(':').nth(1).map(str::trim) else {
                continue;
            };
            let name = name.split('@').next().unwrap_or(name);
            if name.starts_with(&prefix) {
                let _ = run("ip", &["link", "del", name]);
            }
        }
    }
    let _ = run("ip", &["link", "del", &format!("{LINK_PREFIX}br-{run_id}")]);
}
