//! Root-only end to end: the lab's agents behind separate NATs connect and carry traffic.

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_netbird-agent");

fn can_run() -> bool {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: the lab needs root");
        return false;
    }
    for tool in ["ip", "nft", "ping"] {
        let found = ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
            .iter()
            .any(|d| std::path::Path::new(d).join(tool).exists());
        if !found {
            eprintln!("skipped: {tool} is missing");
            return false;
        }
    }
    true
}

#[test]
fn lab_peers_behind_nat_connect_directly() {
    if !can_run() {
        return;
    }
    let child = Command::new(BIN)
        .args(["lab", "--timeout", "60", "--settle", "6"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let prefix = format!("nbl{}x", child.id());
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(text.contains("pinged peer2"), "{text}");
    assert!(text.contains("Connection type: P2P"), "{text}");
    assert!(text.contains("Signal: Connected"), "{text}");
    assert!(text.contains("Relays: 1/1 Available"), "{text}");
    // Nothing is left behind.
    let ns = String::from_utf8_lossy(
        &Command::new("ip")
            .args(["netns", "list"])
            .output()
            .unwrap()
            .stdout,
    )
    .to_string();
    assert!(!ns.contains(&prefix), "namespaces left: {ns}");
}

#[test]
fn traffic_keeps_flowing_while_the_signal_server_restarts() {
    if !can_run() {
        return;
    }
    use netbird_agent::lab::{Lab, LabOptions};
    use std::time::Duration;
    let mut lab = Lab::start(LabOptions {
        binary: BIN.into(),
        peers: 2,
        timeout: Duration::from_secs(60),
        block_udp: false,
        ..Default::default()
    })
    .expect("lab starts");
    let report = lab.run().expect("peers connect");
    let target = report.overlay_ips[1].clone();
    let ns = lab.topo.peer_ns(1);
    let ping = Command::new("ip")
        .args([
            "netns", "exec", &ns, "ping", "-c", "30", "-i", "0.2", "-W", "1", &target,
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(1));
    let pid = lab.testbed_pid().expect("testbed runs");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGUSR1,
    )
    .unwrap();
    let out = ping.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        text.contains("30 received") || text.contains(" 0% packet loss"),
        "{text}"
    );
    // The agents reconnect to signal afterwards.
    let mut signal_back = false;
    for _ in 0..100 {
        let st = lab.status(1).unwrap_or_default();
        if st.contains("Signal: Connected") {
            signal_back = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(signal_back);
}

#[test]
fn with_udp_blocked_peers_use_the_relay_then_upgrade_to_direct() {
    if !can_run() {
        return;
    }
    use netbird_agent::lab::{Lab, LabOptions};
    use std::time::Duration;
    let mut lab = Lab::start(LabOptions {
        binary: BIN.into(),
        peers: 2,
        timeout: Duration::from_secs(60),
        block_udp: true,
        ..Default::default()
    })
    .expect("lab starts");
    lab.run().expect("peers connect through the relay");
    let wait_for = |lab: &Lab, what: &str, secs: u64| {
        for _ in 0..secs * 5 {
            let st = lab.status(1).unwrap_or_default();
            if st.contains(what) {
                return st;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!(
            "status never showed {what}: {}",
            lab.status(1).unwrap_or_default()
        );
    };
    wait_for(&lab, "Connection type: Relayed", 10);
    lab.topo.set_udp_blocked(false).unwrap();
    wait_for(&lab, "Connection type: P2P", 90);
    let ns = lab.topo.peer_ns(1);
    let ping = Command::new("ip")
        .args([
            "netns",
            "exec",
            &ns,
            "ping",
            "-c",
            "3",
            "-W",
            "2",
            "100.64.0.2",
        ])
        .output()
        .unwrap();
    assert!(ping.status.success());
}

#[test]
fn when_the_direct_path_breaks_traffic_moves_to_the_relay() {
    if !can_run() {
        return;
    }
    use netbird_agent::lab::{Lab, LabOptions};
    use std::time::{Duration, Instant};
    let mut lab = Lab::start(LabOptions {
        binary: BIN.into(),
        peers: 2,
        timeout: Duration::from_secs(60),
        block_udp: false,
        ..Default::default()
    })
    .expect("lab starts");
    lab.run().expect("peers connect directly");
    let wait_for = |what: &str, secs: u64| {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let st = lab.status(1).unwrap_or_default();
            if st.contains(what) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "status never showed {what}: {st}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    wait_for("Connection type: P2P", 20);
    // Cut UDP between the NATs: ICE hears nothing on its pair, gives up after upstream's 6 s,
    // and the standby relay carries WireGuard without a new handshake being needed.
    lab.topo.set_udp_blocked(true).unwrap();
    wait_for("Connection type: Relayed", 40);
    let ns = lab.topo.peer_ns(1);
    let ping = Command::new("ip")
        .args([
            "netns",
            "exec",
            &ns,
            "ping",
            "-c",
            "3",
            "-W",
            "2",
            "100.64.0.2",
        ])
        .output()
        .unwrap();
    assert!(
        ping.status.success(),
        "{}",
        String::from_utf8_lossy(&ping.stdout)
    );
}

#[test]
fn without_a_relay_blocked_peers_meet_over_turn() {
    if !can_run() {
        return;
    }
    if std::process::Command::new("turnserver")
        .arg("--help")
        .output()
        .is_err()
    {
        eprintln!("skipped: coturn (turnserver) is not installed");
        return;
    }
    use netbird_agent::lab::{Lab, LabOptions};
    use std::time::Duration;
    let mut lab = Lab::start(LabOptions {
        binary: BIN.into(),
        peers: 2,
        timeout: Duration::from_secs(60),
        block_udp: true,
        turn: true,
        no_relay: true,
    })
    .expect("lab starts");
    lab.run().expect("peers connect through TURN");
    // The status snapshot is refreshed once a second: wait for it to catch up.
    let mut st = String::new();
    for _ in 0..50 {
        st = lab.status(1).unwrap_or_default();
        if st.contains("Connection type: Relayed") {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(st.contains("Connection type: Relayed"), "{st}");
    assert!(st.contains("relay"), "a relay candidate is in use: {st}");
    assert!(
        st.contains("Relays: 0/0"),
        "no NetBird relay was offered: {st}"
    );
    let ns = lab.topo.peer_ns(1);
    let ping = Command::new("ip")
        .args([
            "netns",
            "exec",
            &ns,
            "ping",
            "-c",
            "3",
            "-W",
            "2",
            "100.64.0.2",
        ])
        .output()
        .unwrap();
    assert!(ping.status.success());
}
