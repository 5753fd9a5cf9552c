//! `systemd-analyze verify` accepts the unit (with ExecStart pointing at the built binary).

use std::process::Command;

#[test]
fn unit_passes_systemd_analyze_verify() {
    let analyze = ["/usr/bin/systemd-analyze", "/bin/systemd-analyze"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists());
    let Some(analyze) = analyze else {
        eprintln!("skipped: systemd-analyze is not installed");
        return;
    };
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/systemd/netbird-agent.service"
    ))
    .unwrap();
    assert!(unit.contains("Type=notify"));
    assert!(unit.contains("Restart=on-failure"));
    assert!(unit.contains("ProtectSystem=strict"));
    let unit = unit.replace(
        "/usr/bin/netbird-agent",
        env!("CARGO_BIN_EXE_netbird-agent"),
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("netbird-agent.service");
    std::fs::write(&path, unit).unwrap();
    let out = Command::new(analyze)
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let ours: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("netbird-agent.service"))
        .collect();
    assert!(out.status.success(), "{stderr}");
    assert!(ours.is_empty(), "warnings about our unit: {ours:?}");
}

#[test]
fn service_install_writes_the_unit_without_systemd() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_netbird-agent"))
        .args(["service", "install", "--unit-dir"])
        .arg(dir.path())
        .args(["--service-env", "NB_LOG_LEVEL=debug"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let unit = std::fs::read_to_string(dir.path().join("netbird-agent.service")).unwrap();
    assert!(unit.contains("Environment=\"NB_LOG_LEVEL=debug\""));
    let out = Command::new(env!("CARGO_BIN_EXE_netbird-agent"))
        .args(["service", "uninstall", "--unit-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(!dir.path().join("netbird-agent.service").exists());
}
