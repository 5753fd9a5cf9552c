//! Root-only: the daemon with the real data plane in its own network namespace creates the
//! WireGuard interface on `up`, and SIGTERM (or `down`) removes it.

use std::process::{Command, Stdio};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_netbird-agent");

struct Netns(String);

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.0])
            .output();
    }
}

fn link_exists(ns: &str, dev: &str) -> bool {
    Command::new("ip")
        .args(["-n", ns, "link", "show", dev])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

fn wait(mut f: impl FnMut() -> bool) -> bool {
    for _ in 0..100 {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

#[test]
fn down_and_sigterm_remove_the_interface() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: needs root for network namespaces and TUN");
        return;
    }
    let ns = Netns(format!("nbd{}", std::process::id()));
    assert!(Command::new("ip")
        .args(["netns", "add", &ns.0])
        .status()
        .unwrap()
        .success());
    Command::new("ip")
        .args(["-n", &ns.0, "link", "set", "lo", "up"])
        .status()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut testbed = Command::new("ip")
        .args(["netns", "exec", &ns.0, BIN, "testbed", "--create-setup-key"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let key = {
        use std::io::BufRead;
        let mut lines = std::io::BufReader::new(testbed.stdout.take().unwrap()).lines();
        loop {
            let l = lines.next().expect("testbed prints a key").unwrap();
            if let Some(k) = l.strip_prefix("setup key: ") {
                break k.to_string();
            }
        }
    };
    // Someone else holds the WireGuard port in this namespace: the agent takes a random one.
    let busy = {
        let path = format!("/run/netns/{}", ns.0);
        std::thread::spawn(move || {
            use std::os::fd::AsRawFd;
            let f = std::fs::File::open(&path).expect("netns file");
            // SAFETY: setns on a valid namespace descriptor affects only this thread.
            let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns");
            std::net::UdpSocket::bind("0.0.0.0:51820").expect("bind 51820")
        })
        .join()
        .expect("thread")
    };
    let sock = dir.path().join("d.sock");
    let addr = format!("unix://{}", sock.display());
    let mut daemon = Command::new("ip")
        .args([
            "netns",
            "exec",
            &ns.0,
            BIN,
            "service",
            "run",
            "--daemon-addr",
            &addr,
            "--config-dir",
        ])
        .arg(dir.path().join("state"))
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    assert!(wait(|| sock.exists()));
    let up = Command::new(BIN)
        .args([
            "up",
            "-m",
            "http://127.0.0.1:33073",
            "-k",
            &key,
            "--daemon-addr",
            &addr,
            "--interface-name",
            "wtx0",
        ])
        .output()
        .unwrap();
    assert!(
        up.status.success(),
        "{}",
        String::from_utf8_lossy(&up.stderr)
    );
    assert!(
        wait(|| link_exists(&ns.0, "wtx0")),
        "interface created on up"
    );
    let mut port_line = String::new();
    assert!(
        wait(|| {
            let st = Command::new(BIN)
                .args(["status", "--daemon-addr", &addr])
                .output()
                .unwrap();
            port_line = String::from_utf8_lossy(&st.stdout)
                .lines()
                .find(|l| l.starts_with("Wireguard port:"))
                .unwrap_or_default()
                .to_string();
            !port_line.is_empty() && !port_line.ends_with(" 51820")
        }),
        "status shows the port really used: {port_line:?}"
    );
    drop(busy);
    let down = Command::new(BIN)
        .args(["down", "--daemon-addr", &addr])
        .output()
        .unwrap();
    assert!(down.status.success());
    assert!(
        wait(|| !link_exists(&ns.0, "wtx0")),
        "interface removed on down"
    );
    let up = Command::new(BIN)
        .args(["up", "--daemon-addr", &addr])
        .output()
        .unwrap();
    assert!(
        up.status.success(),
        "{}",
        String::from_utf8_lossy(&up.stderr)
    );
    assert!(wait(|| link_exists(&ns.0, "wtx0")));
    // `ip netns exec` execs the program, so the child is the daemon itself.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(daemon.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert!(
        wait(|| matches!(daemon.try_wait(), Ok(Some(_)))),
        "daemon exits on SIGTERM"
    );
    assert!(!link_exists(&ns.0, "wtx0"), "interface removed on SIGTERM");
    assert!(!sock.exists(), "socket removed");
    let _ = testbed.kill();
    let _ = testbed.wait();
}
