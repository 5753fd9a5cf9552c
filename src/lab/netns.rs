//! Lab topology: a WAN namespace holding the servers, and per peer a NAT router namespace and a
//! peer namespace. Addresses come from 198.18.0.0/15 (benchmark range) and 10.N.0.0/24, only
//! inside our namespaces. Dropping the topology deletes every namespace it made.

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Command;

/// One setup command (argv), run with its failure reported verbatim.
#[derive(Debug, Clone)]
pub struct Cmd(pub Vec<String>);

impl Cmd {
    fn new(parts: &[&str]) -> Self {
        Cmd(parts.iter().map(|s| s.to_string()).collect())
    }

    /// Runs it.
    pub fn run(&self) -> Result<(), String> {
        let out = Command::new(&self.0[0])
            .args(&self.0[1..])
            .output()
            .map_err(|e| format!("{}: {e}", self.0.join(" ")))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "`{}` failed: {}",
                self.0.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }
}

/// `nft <args…>` run inside namespace `ns`.
fn nft(ns: &str, args: &[&str]) -> Cmd {
    let mut parts = vec!["ip", "netns", "exec", ns, "nft"];
    parts.extend_from_slice(args);
    Cmd::new(&parts)
}

/// Network namespaces of one lab run.
#[derive(Debug)]
pub struct Topology {
    /// Prefix of every name, unique per run.
    pub prefix: String,
    /// The WAN namespace.
    pub wan: String,
    /// Number of peers.
    pub peers: usize,
    namespaces: Vec<String>,
}

impl Topology {
    /// The servers' address inside the WAN namespace.
    pub fn server_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(198, 18, 0, 1)
    }

    /// Name of peer `i`'s namespace.
    pub fn peer_ns(&self, i: usize) -> String {
        format!("{}p{i}", self.prefix)
    }

    /// Name of router `i`'s namespace.
    pub fn router_ns(&self, i: usize) -> String {
        format!("{}r{i}", self.prefix)
    }

    /// A command that runs `program` inside namespace `ns`.
    pub fn exec_in(&self, ns: &str, program: &Path) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns]).arg(program);
        c
    }

    fn add_ns(&mut self, name: &str) -> Result<(), String> {
        Cmd::new(&["ip", "netns", "add", name]).run()?;
        self.namespaces.push(name.to_string());
        Cmd::new(&["ip", "-n", name, "link", "set", "lo", "up"]).run()
    }

    /// Builds the namespaces, links, addresses, routes and NAT. `block_udp` drops UDP between
    /// the routers' public sides (only the servers stay reachable), forcing the relay.
    pub fn build(peers: usize, block_udp: bool) -> Result<Topology, String> {
        static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let prefix = format!("nbl{}x{n}", std::process::id());
        let mut t = Topology {
            wan: format!("{prefix}w"),
            prefix,
            peers,
            namespaces: Vec::new(),
        };
        let wan = t.wan.clone();
        t.add_ns(&wan)?;
        let server = t.server_ip().to_string();
        let mut cmds = vec![
            Cmd::new(&[
                "ip",
                "-n",
                &wan,
                "addr",
                "add",
                &format!("{server}/32"),
                "dev",
                "lo",
            ]),
            Cmd::new(&[
                "ip",
                "netns",
                "exec",
                &wan,
                "sysctl",
                "-qw",
                "net.ipv4.ip_forward=1",
            ]),
        ];
        for i in 1..=peers {
            let (r, p) = (t.router_ns(i), t.peer_ns(i));
            t.add_ns(&r)?;
            t.add_ns(&p)?;
            let wan_if = format!("w{i}");
            let pub_net = format!("198.18.{i}");
            let lan_net = format!("10.{i}.0");
            cmds.extend([
                Cmd::new(&[
                    "ip", "link", "add", &wan_if, "netns", &wan, "type", "veth", "peer", "name",
                    "wan", "netns", &r,
                ]),
                Cmd::new(&[
                    "ip",
                    "-n",
                    &wan,
                    "addr",
                    "add",
                    &format!("{pub_net}.1/24"),
                    "dev",
                    &wan_if,
                ]),
                Cmd::new(&["ip", "-n", &wan, "link", "set", &wan_if, "up"]),
                Cmd::new(&[
                    "ip",
                    "-n",
                    &r,
                    "addr",
                    "add",
                    &format!("{pub_net}.2/24"),
                    "dev",
                    "wan",
                ]),
                Cmd::new(&["ip", "-n", &r, "link", "set", "wan", "up"]),
                Cmd::new(&[
                    "ip",
                    "-n",
                    &r,
                    "route",
                    "add",
                    "default",
                    "via",
                    &format!("{pub_net}.1"),
                ]),
                Cmd::new(&[
                    "ip", "link", "add", "lan", "netns", &r, "type", "veth", "peer", "name",
                    "eth0", "netns", &p,
                ]),
                Cmd::new(&[
                    "ip",
                    "-n",
                    &r,
                    "addr",
                    "add",
                    &format!("{lan_net}.1/24"),
                    "dev",
                    "lan",
                ]),
                Cmd::new(&["ip", "-n", &r, "link", "set", "lan", "up"]),
                Cmd::new(&[
                    "ip",
                    "-n",
                    &p,
                    "addr",
                    "add",
                    &format!("{lan_net}.2/24"),
                    "dev",
                    "eth0",
                ]),
                Cmd::new(&["ip", "-n", &p, "link", "set", "eth0", "up"]),
                Cmd::new(&[
                    "ip",
                    "-n",
                    &p,
                    "route",
                    "add",
                    "default",
                    "via",
                    &format!("{lan_net}.1"),
                ]),
                Cmd::new(&[
                    "ip",
                    "netns",
                    "exec",
                    &r,
                    "sysctl",
                    "-qw",
                    "net.ipv4.ip_forward=1",
                ]),
                nft(&r, &["add", "table", "ip", "nat"]),
                nft(
                    &r,
                    &["add chain ip nat post { type nat hook postrouting priority 100 ; }"],
                ),
                nft(&r, &["add rule ip nat post oifname \"wan\" masquerade"]),
                // Like a home router: unsolicited UDP to the router itself is dropped before its
                // conntrack entry is confirmed, so a stray early check cannot pin the port.
                nft(&r, &["add", "table", "inet", "fw"]),
                nft(
                    &r,
                    &["add chain inet fw in { type filter hook input priority 0 ; }"],
                ),
                nft(
                    &r,
                    &["add rule inet fw in iifname \"wan\" meta l4proto udp ct state new drop"],
                ),
            ]);
        }
        for c in &cmds {
            c.run()?;
        }
        if block_udp {
            t.set_udp_blocked(true)?;
        }
        Ok(t)
    }

    /// Blocks or unblocks UDP between the routers (the servers stay reachable).
    pub fn set_udp_blocked(&self, blocked: bool) -> Result<(), String> {
        let _ = nft(&self.wan, &["delete", "table", "inet", "lab"]).run();
        if blocked {
            nft(&self.wan, &["add", "table", "inet", "lab"]).run()?;
            nft(
                &self.wan,
                &["add chain inet lab blockudp { type filter hook forward priority 0 ; }"],
            )
            .run()?;
            nft(
                &self.wan,
                &["add rule inet lab blockudp meta l4proto udp drop"],
            )
            .run()?;
        }
        Ok(())
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        for ns in self.namespaces.iter().rev() {
            let _ = Command::new("ip").args(["netns", "delete", ns]).output();
        }
    }
}
