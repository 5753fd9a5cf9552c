//! Root-only: our standalone userspace device and wireguard-go in two network namespaces
//! handshake, ping and carry iperf3 both ways; `wg show` reads ours and `wg set` changes it.

use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_netbird-agent");

fn have(tool: &str) -> bool {
    ["/usr/bin", "/usr/sbin", "/bin", "/sbin"]
        .iter()
        .any(|d| std::path::Path::new(d).join(tool).exists())
}

fn skip(tools: &[&str]) -> bool {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: needs root for namespaces and TUN");
        return true;
    }
    for t in tools {
        if !have(t) {
            eprintln!("skipped: {t} is not installed (scripts/install-deps.sh installs it)");
            return true;
        }
    }
    false
}

fn sh(args: &[&str]) -> Output {
    Command::new(args[0])
        .args(&args[1..])
        .output()
        .expect("command runs")
}

fn ok(args: &[&str]) -> String {
    let o = sh(args);
    assert!(
        o.status.success(),
        "{:?}: {}",
        args,
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).to_string()
}

/// Two namespaces joined by a veth pair; everything is removed on drop.
struct Pair {
    a: String,
    b: String,
    procs: Vec<Child>,
}

impl Pair {
    fn new(tag: &str) -> Pair {
        let id = std::process::id() % 100_000;
        let p = Pair {
            a: format!("nbw{tag}{id}a"),
            b: format!("nbw{tag}{id}b"),
            procs: Vec::new(),
        };
        for ns in [&p.a, &p.b] {
            ok(&["ip", "netns", "add", ns]);
            ok(&["ip", "-n", ns, "link", "set", "lo", "up"]);
        }
        ok(&[
            "ip", "link", "add", "veth0", "netns", &p.a, "type", "veth", "peer", "name", "veth0",
            "netns", &p.b,
        ]);
        ok(&[
            "ip",
            "-n",
            &p.a,
            "addr",
            "add",
            "198.18.77.1/24",
            "dev",
            "veth0",
        ]);
        ok(&[
            "ip",
            "-n",
            &p.b,
            "addr",
            "add",
            "198.18.77.2/24",
            "dev",
            "veth0",
        ]);
        ok(&["ip", "-n", &p.a, "link", "set", "veth0", "up"]);
        ok(&["ip", "-n", &p.b, "link", "set", "veth0", "up"]);
        p
    }

    fn spawn(&mut self, ns: &str, args: &[&str]) {
        let child = Command::new("ip")
            .args(["netns", "exec", ns])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn");
        self.procs.push(child);
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        for c in &mut self.procs {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        for c in &mut self.procs {
            for _ in 0..50 {
                if let Ok(Some(_)) = c.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        for ns in [&self.a, &self.b] {
            let _ = sh(&["ip", "netns", "delete", ns]);
        }
    }
}

fn wait_link(ns: &str, dev: &str) {
    for _ in 0..100 {
        if sh(&["ip", "-n", ns, "link", "show", dev]).status.success()
            && std::path::Path::new(&format!("/var/run/wireguard/{dev}.sock")).exists()
        {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("{dev} did not appear in {ns}");
}

fn genkey() -> (String, String) {
    let private = ok(&["wg", "genkey"]).trim().to_string();
    let mut c = Command::new("wg")
        .arg("pubkey")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    c.stdin
        .take()
        .unwrap()
        .write_all(private.as_bytes())
        .unwrap();
    let public = String::from_utf8_lossy(&c.wait_with_output().unwrap().stdout)
        .trim()
        .to_string();
    (private, public)
}

#[test]
fn ours_and_wireguard_go_handshake_ping_and_iperf_both_ways() {
    if skip(&["wg", "wireguard-go", "iperf3", "ping"]) {
        return;
    }
    let mut pair = Pair::new("g");
    let id = std::process::id() % 100_000;
    let (ours, theirs) = (format!("nbo{id}"), format!("nbg{id}"));
    pair.spawn(&pair.a.clone(), &[BIN, "wireguard", "-f", &ours]);
    pair.spawn(&pair.b.clone(), &["wireguard-go", "-f", &theirs]);
    wait_link(&pair.a, &ours);
    wait_link(&pair.b, &theirs);
    let (ka, pa) = genkey();
    let (kb, pb) = genkey();
    let dir = tempfile::tempdir().unwrap();
    let (fa, fb) = (dir.path().join("a"), dir.path().join("b"));
    std::fs::write(&fa, &ka).unwrap();
    std::fs::write(&fb, &kb).unwrap();
    ok(&[
        "ip",
        "netns",
        "exec",
        &pair.a,
        "wg",
        "set",
        &ours,
        "private-key",
        fa.to_str().unwrap(),
        "listen-port",
        "51820",
        "peer",
        &pb,
        "allowed-ips",
        "100.99.0.2/32",
        "endpoint",
        "198.18.77.2:51820",
        "persistent-keepalive",
        "25",
    ]);
    ok(&[
        "ip",
        "netns",
        "exec",
        &pair.b,
        "wg",
        "set",
        &theirs,
        "private-key",
        fb.to_str().unwrap(),
        "listen-port",
        "51820",
        "peer",
        &pa,
        "allowed-ips",
        "100.99.0.1/32",
        "endpoint",
        "198.18.77.1:51820",
    ]);
    ok(&[
        "ip",
        "-n",
        &pair.a,
        "addr",
        "add",
        "100.99.0.1/24",
        "dev",
        &ours,
    ]);
    ok(&[
        "ip", "-n", &pair.a, "link", "set", &ours, "mtu", "1420", "up",
    ]);
    ok(&[
        "ip",
        "-n",
        &pair.b,
        "addr",
        "add",
        "100.99.0.2/24",
        "dev",
        &theirs,
    ]);
    ok(&[
        "ip", "-n", &pair.b, "link", "set", &theirs, "mtu", "1420", "up",
    ]);

    ok(&[
        "ip",
        "netns",
        "exec",
        &pair.a,
        "ping",
        "-c",
        "3",
        "-W",
        "2",
        "100.99.0.2",
    ]);
    ok(&[
        "ip",
        "netns",
        "exec",
        &pair.b,
        "ping",
        "-c",
        "3",
        "-W",
        "2",
        "100.99.0.1",
    ]);
    let hs = ok(&[
        "ip",
        "netns",
        "exec",
        &pair.a,
        "wg",
        "show",
        &ours,
        "latest-handshakes",
    ]);
    let ts: u64 = hs
        .split_whitespace()
        .nth(1)
        .and_then(|t| t.parse().ok())
        .unwrap_or(0);
    assert!(ts > 0, "handshake recorded: {hs}");

    pair.spawn(&pair.b.clone(), &["iperf3", "-s", "-B", "100.99.0.2"]);
    std::thread::sleep(Duration::from_millis(500));
    for reverse in [false, true] {
        let mut args = vec![
            "ip",
            "netns",
            "exec",
            &pair.a,
            "iperf3",
            "-c",
            "100.99.0.2",
            "-t",
            "2",
            "-J",
        ];
        if reverse {
            args.push("-R");
        }
        let out = ok(&args);
        let v: serde_json::Value = serde_json::from_str(&out).expect("iperf3 JSON");
        let bps = v["end"]["sum_received"]["bits_per_second"]
            .as_f64()
            .unwrap_or(0.0);
        assert!(
            bps > 1e6,
            "iperf3 reverse={reverse} moved data: {bps} bit/s"
        );
    }
}

#[test]
fn wg_show_reads_and_wg_set_changes_our_device() {
    if skip(&["wg"]) {
        return;
    }
    let mut pair = Pair::new("s");
    let dev = format!("nbs{}", std::process::id() % 100_000);
    pair.spawn(&pair.a.clone(), &[BIN, "wireguard", &dev]);
    wait_link(&pair.a, &dev);
    let (k, p) = genkey();
    let (_, peer) = genkey();
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("k");
    std::fs::write(&f, &k).unwrap();
    ok(&[
        "wg",
        "set",
        &dev,
        "private-key",
        f.to_str().unwrap(),
        "listen-port",
        "41820",
    ]);
    let show = ok(&["wg", "show", &dev]);
    assert!(show.contains(&p), "{show}");
    assert!(show.contains("listening port: 41820"), "{show}");
    ok(&[
        "wg",
        "set",
        &dev,
        "peer",
        &peer,
        "allowed-ips",
        "100.99.0.7/32,10.9.0.0/16",
        "endpoint",
        "198.18.77.9:5000",
        "persistent-keepalive",
        "25",
    ]);
    let dump = ok(&["wg", "show", &dev, "dump"]);
    let line = dump
        .lines()
        .find(|l| l.starts_with(&peer))
        .unwrap_or_else(|| panic!("{dump}"));
    assert!(line.contains("198.18.77.9:5000"), "{line}");
    assert!(
        line.contains("100.99.0.7/32") && line.contains("10.9.0.0/16"),
        "{line}"
    );
    assert!(line.ends_with("\t25"), "{line}");
    ok(&["wg", "set", &dev, "peer", &peer, "remove"]);
    let dump = ok(&["wg", "show", &dev, "dump"]);
    assert!(!dump.contains(&peer), "{dump}");
    // Garbage on the socket is answered with an error, and the device keeps working.
    let sock = format!("/var/run/wireguard/{dev}.sock");
    {
        use std::io::{Read, Write};
        let mut s = std::os::unix::net::UnixStream::connect(&sock).unwrap();
        s.write_all(b"set=1\nnonsense\n\n").unwrap();
        let mut buf = [0u8; 64];
        let n = s.read(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"errno=-22\n\n");
    }
    assert!(ok(&["wg", "show", &dev]).contains(&p));
    drop(pair);
    assert!(
        !std::path::Path::new(&sock).exists(),
        "socket removed on exit"
    );
}
