//! `service run` under a notify socket: READY=1 arrives once the daemon socket accepts
//! connections, STOPPING=1 on SIGTERM, and the daemon exits cleanly.

use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::Duration;

#[test]
fn ready_after_the_socket_listens_and_stopping_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let notify_path = dir.path().join("notify");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    let sock = dir.path().join("d.sock");
    let mut child = Command::new(env!("CARGO_BIN_EXE_netbird-agent"))
        .args(["service", "run", "--no-data-plane", "--daemon-addr"])
        .arg(format!("unix://{}", sock.display()))
        .arg("--config-dir")
        .arg(dir.path().join("state"))
        .env("NOTIFY_SOCKET", &notify_path)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut buf = [0u8; 64];
    let n = notify.recv(&mut buf).expect("READY=1 arrives");
    assert_eq!(&buf[..n], b"READY=1");
    assert!(
        std::os::unix::net::UnixStream::connect(&sock).is_ok(),
        "socket accepts connections when READY is sent"
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let n = notify.recv(&mut buf).expect("STOPPING=1 arrives");
    assert_eq!(&buf[..n], b"STOPPING=1");
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
    assert!(!sock.exists(), "socket removed on exit");
}
