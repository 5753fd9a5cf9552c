//! Root-only end to end: the lab's agents behind separate NATs connect and carry traffic.

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_netbird-agent");

fn can_run() -> bool {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: the lab needs root");
        return false;
    }
    for tool in ["ip", "nft", "ping"] {
        let found = ["/usr/sbin", "/sbin", "/usr/bin", "/bin"].iter().any(|d| std::path::Path::new(d).join(tool).exists());
        if !found {
            eprintln!("skipped: {tool} is missing");
            return false;
        }
    }
    true
}

#[test]
fn lab_peers_behind_nat_ping_each_other_through_the_relay() {
    if !can_run() {
        return;
    }
    let out = Command::new(BIN).args(["lab", "--timeout", "60"]).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{text}");
    assert!(text.contains("pinged peer2"), "{text}");
    assert!(text.contains("Connection type: Relayed"), "{text}");
    assert!(text.contains("Signal: Connected"), "{text}");
    assert!(text.contains("Relays: 1/1 Available"), "{text}");
    // Nothing is left behind.
    let ns = String::from_utf8_lossy(&Command::new("ip").args(["netns", "list"]).output().unwrap().stdout).to_string();
    assert!(!ns.contains("nbl"), "namespaces left: {ns}");
}
