//! Root-only tests of the standalone userspace device (`netbird-agent wireguard`) in network
//! namespaces: interop with wireguard-go (handshake, ping, iperf3 both ways) and `wg show` /
//! `wg set` over our UAPI socket. Skipped with a printed reason when not root or when a tool is
//! missing. Every namespace and process is removed by Drop guards, also on failure.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_netbird-agent");

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn skip_reason(tools: &[&str]) -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("not root".into());
    }
    tools
        .iter()
        .find(|t| !have(t))
        .map(|t| format!("missing tool {t}"))
}

fn sh(args: &[&str]) -> String {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("running {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn ok(args: &[&str]) -> bool {
    Command::new(args[0])
        .args(&args[1..])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

static SEQ: AtomicU32 = AtomicU32::new(0);

/// Unique short names for this test process.
fn unique(tag: &str) -> String {
    format!(
        "{tag}{}{}",
        std::process::id() % 100_000,
        SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

/// A network namespace deleted on drop.
struct Netns(String);
impl Netns {
    fn new(tag: &str) -> Netns {
        let name = format!("nbwg-{}", unique(tag));
        sh(&["ip", "netns", "add", &name]);
        let ns = Netns(name);
        ns.exec(&["ip", "link", "set", "lo", "up"]);
        ns
    }
    fn exec(&self, args: &[&str]) -> String {
        let mut v = vec!["ip", "netns", "exec", &self.0];
        v.extend_from_slice(args);
        sh(&v)
    }
    fn try_exec(&self, args: &[&str]) -> bool {
        let mut v = vec!["ip", "netns", "exec", &self.0];
        v.extend_from_slice(args);
        ok(&v)
    }
    fn spawn(&self, args: &[&str], log: &Path) -> Proc {
        let f = std::fs::File::create(log).expect("log file");
        let child = Command::new("ip")
            .args(["netns", "exec", &self.0])
            .args(args)
            .stdin(Stdio::null())
            .stdout(f.try_clone().expect("log"))
            .stderr(f)
            .spawn()
            .expect("spawn");
        Proc(Some(child))
    }
}
impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// A child process: SIGTERM on drop, SIGKILL if it does not exit within 3 s.
struct Proc(Option<Child>);
impl Proc {
    fn pid(&self) -> i32 {
        self.0.as_ref().map_or(0, |c| c.id() as i32)
    }
    /// Sends SIGTERM and waits; returns whether it exited by itself in time.
    fn terminate(&mut self) -> bool {
        let Some(mut c) = self.0.take() else {
            return true;
        };
        let _ = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = c.try_wait() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = c.kill();
        let _ = c.wait();
        false
    }
    fn alive(&mut self) -> bool {
        self.0
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }
}
impl Drop for Proc {
    fn drop(&mut self) {
        self.terminate();
    }
}

/// A temporary directory removed on drop.
struct TempDir(PathBuf);
impl TempDir {
    fn new() -> TempDir {
        let p = std::env::temp_dir().join(unique("nbwg-test-"));
        std::fs::create_dir_all(&p).expect("tmp dir");
        TempDir(p)
    }
}
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn sock_path(ifname: &str) -> PathBuf {
    PathBuf::from(format!("/var/run/wireguard/{ifname}.sock"))
}

fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("timed out waiting for {what}");
}

fn genkey(dir: &Path, name: &str) -> (PathBuf, String) {
    let key = sh(&["wg", "genkey"]);
    let path = dir.join(name);
    std::fs::write(&path, key.trim()).expect("key file");
    let out = Command::new("sh")
        .args(["-c", &format!("wg pubkey < {}", path.display())])
        .output()
        .expect("wg pubkey");
    (
        path,
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
    )
}

/// Starts our standalone device in `ns` and waits for its UAPI socket.
fn start_ours(ns: &Netns, ifname: &str, log: &Path) -> Proc {
    let mut p = ns.spawn(&[BIN, "wireguard", "--foreground", ifname], log);
    let sock = sock_path(ifname);
    wait_for("our UAPI socket", Duration::from_secs(10), || {
        assert!(
            p.alive(),
            "device exited: {}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        sock.exists()
    });
    p
}

fn iperf(
    client: &Netns,
    server: &Netns,
    server_ip: &str,
    client_ip: &str,
    reverse: bool,
    dir: &Path,
) {
    let mut srv = server.spawn(
        &["iperf3", "-s", "-1", "-B", server_ip, "-p", "5201"],
        &dir.join(format!("iperf-srv-{reverse}.log")),
    );
    wait_for("iperf3 server", Duration::from_secs(10), || {
        server
            .exec(&["ss", "-Hltn", "sport = :5201"])
            .contains("5201")
    });
    let mut args = vec![
        "timeout", "30", "iperf3", "-c", server_ip, "-B", client_ip, "-p", "5201", "-t", "2", "-J",
    ];
    if reverse {
        args.push("-R");
    }
    let json = client.exec(&args);
    let v: serde_json::Value = serde_json::from_str(&json).expect("iperf3 JSON");
    let bytes = v["end"]["sum_received"]["bytes"].as_f64().unwrap_or(0.0);
    assert!(
        bytes > 100_000.0,
        "iperf3 (reverse={reverse}) moved only {bytes} bytes"
    );
    srv.terminate();
}

#[test]
fn interop_with_wireguard_go_handshake_ping_iperf() {
    if let Some(r) = skip_reason(&["ip", "wg", "wireguard-go", "iperf3", "ping", "ss"]) {
        println!("skipped: {r}");
        return;
    }
    let dir = TempDir::new();
    let a = Netns::new("a");
    let b = Netns::new("b");
    sh(&[
        "ip", "link", "add", "veth0", "netns", &a.0, "type", "veth", "peer", "name", "veth0",
        "netns", &b.0,
    ]);
    a.exec(&["ip", "addr", "add", "198.18.7.1/30", "dev", "veth0"]);
    b.exec(&["ip", "addr", "add", "198.18.7.2/30", "dev", "veth0"]);
    a.exec(&["ip", "link", "set", "veth0", "up"]);
    b.exec(&["ip", "link", "set", "veth0", "up"]);

    let if_a = unique("nbt");
    let if_b = unique("wgo");
    let ours = start_ours(&a, &if_a, &dir.0.join("ours.log"));
    let mut wggo = b.spawn(
        &[
            "env",
            "WG_PROCESS_FOREGROUND=1",
            "LOG_LEVEL=error",
            "wireguard-go",
            "-f",
            &if_b,
        ],
        &dir.0.join("wggo.log"),
    );
    wait_for("wireguard-go socket", Duration::from_secs(10), || {
        assert!(wggo.alive(), "wireguard-go exited");
        sock_path(&if_b).exists()
    });

    let (ka, pa) = genkey(&dir.0, "a.key");
    let (kb, pb) = genkey(&dir.0, "b.key");
    let ka = ka.to_string_lossy().to_string();
    let kb = kb.to_string_lossy().to_string();
    a.exec(&[
        "wg",
        "set",
        &if_a,
        "listen-port",
        "51820",
        "private-key",
        &ka,
        "peer",
        &pb,
        "endpoint",
        "198.18.7.2:51820",
        "allowed-ips",
        "100.64.7.2/32",
    ]);
    b.exec(&[
        "wg",
        "set",
        &if_b,
        "listen-port",
        "51820",
        "private-key",
        &kb,
        "peer",
        &pa,
        "endpoint",
        "198.18.7.1:51820",
        "allowed-ips",
        "100.64.7.1/32",
    ]);
    for (ns, ifn, ip) in [(&a, &if_a, "100.64.7.1/24"), (&b, &if_b, "100.64.7.2/24")] {
        ns.exec(&["ip", "addr", "add", ip, "dev", ifn]);
        ns.exec(&["ip", "link", "set", "dev", ifn, "mtu", "1420", "up"]);
    }

    wait_for("first ping A->B", Duration::from_secs(15), || {
        a.try_exec(&["ping", "-c", "1", "-W", "1", "100.64.7.2"])
    });
    a.exec(&["ping", "-c", "3", "-i", "0.2", "-W", "1", "100.64.7.2"]);
    b.exec(&["ping", "-c", "3", "-i", "0.2", "-W", "1", "100.64.7.1"]);

    for (ns, ifn, peer) in [(&a, &if_a, &pb), (&b, &if_b, &pa)] {
        let hs = ns.exec(&["wg", "show", ifn, "latest-handshakes"]);
        let ts: u64 = hs
            .split_whitespace()
            .nth(1)
            .and_then(|t| t.parse().ok())
            .unwrap_or(0);
        assert!(
            hs.contains(peer.as_str()) && ts > 0,
            "no handshake on {ifn}: {hs:?}"
        );
    }
    let dump = a.exec(&["wg", "show", &if_a, "transfer"]);
    assert!(!dump.contains("\t0\t0"), "no traffic counted: {dump}");

    iperf(&a, &b, "100.64.7.2", "100.64.7.1", false, &dir.0);
    iperf(&a, &b, "100.64.7.2", "100.64.7.1", true, &dir.0);

    // Shutdown on SIGTERM removes the socket and the interface.
    let mut ours = ours;
    assert!(ours.terminate(), "our device did not exit on SIGTERM");
    assert!(!sock_path(&if_a).exists(), "UAPI socket left behind");
    assert!(
        !a.try_exec(&["ip", "link", "show", "dev", &if_a]),
        "interface left behind"
    );
    let _ = ours.pid();
}

/// Peers in `wg show <if> dump` output: (public key, allowed ips, keepalive).
fn dump_peers(dump: &str) -> Vec<(String, String, String)> {
    dump.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            (f.len() >= 8).then(|| (f[0].to_string(), f[3].to_string(), f[7].to_string()))
        })
        .collect()
}

#[test]
fn wg_show_and_set_drive_standalone_device() {
    if let Some(r) = skip_reason(&["ip", "wg"]) {
        println!("skipped: {r}");
        return;
    }
    let dir = TempDir::new();
    let ns = Netns::new("s");
    let ifn = unique("nbs");
    let mut dev = start_ours(&ns, &ifn, &dir.0.join("ours.log"));

    let show = ns.exec(&["wg", "show", &ifn]);
    assert!(show.contains(&format!("interface: {ifn}")), "{show}");
    assert!(show.contains("listening port:"), "{show}");

    let (key, public) = genkey(&dir.0, "own.key");
    let (_, p1) = genkey(&dir.0, "p1.key");
    let (_, p2) = genkey(&dir.0, "p2.key");
    let key = key.to_string_lossy().to_string();
    ns.exec(&[
        "wg",
        "set",
        &ifn,
        "private-key",
        &key,
        "listen-port",
        "51999",
        "peer",
        &p1,
        "allowed-ips",
        "100.64.9.0/24,fd00:9::/64",
        "endpoint",
        "198.18.9.9:51820",
        "persistent-keepalive",
        "25",
        "peer",
        &p2,
        "allowed-ips",
        "100.64.10.7/32",
    ]);
    let dump = ns.exec(&["wg", "show", &ifn, "dump"]);
    let first: Vec<&str> = dump.lines().next().unwrap_or("").split('\t').collect();
    assert_eq!(
        first.get(1),
        Some(&public.as_str()),
        "own public key: {dump}"
    );
    assert_eq!(first.get(2), Some(&"51999"), "listen port: {dump}");
    let peers = dump_peers(&dump);
    assert_eq!(peers.len(), 2, "{dump}");
    let e1 = peers.iter().find(|p| p.0 == p1).expect("peer 1 listed");
    assert_eq!(e1.1, "100.64.9.0/24,fd00:9::/64");
    assert_eq!(e1.2, "25");
    assert!(dump.contains("198.18.9.9:51820"), "{dump}");

    // Moving an allowed IP takes it from the other peer; removing one peer keeps the other.
    ns.exec(&[
        "wg",
        "set",
        &ifn,
        "peer",
        &p2,
        "allowed-ips",
        "100.64.10.7/32,100.64.9.0/24",
    ]);
    let peers = dump_peers(&ns.exec(&["wg", "show", &ifn, "dump"]));
    let e1 = peers.iter().find(|p| p.0 == p1).expect("peer 1 listed");
    assert_eq!(e1.1, "fd00:9::/64");
    ns.exec(&["wg", "set", &ifn, "peer", &p1, "remove"]);
    let peers = dump_peers(&ns.exec(&["wg", "show", &ifn, "dump"]));
    assert_eq!(peers.len(), 1);
    assert_eq!(peers[0].0, p2);
    assert_eq!(peers[0].1, "100.64.10.7/32,100.64.9.0/24");

    // A bad request is refused and changes nothing.
    assert!(!ns.try_exec(&["wg", "set", &ifn, "listen-port", "notaport"]));
    let again = ns.exec(&["wg", "show", &ifn, "listen-port"]);
    assert_eq!(again.trim(), "51999");

    // Deleting the interface from outside ends the process and removes its socket.
    ns.exec(&["ip", "link", "del", "dev", &ifn]);
    wait_for("exit after link deletion", Duration::from_secs(5), || {
        !dev.alive()
    });
    assert!(!sock_path(&ifn).exists(), "UAPI socket left behind");
}
