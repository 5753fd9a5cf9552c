//! The .deb builds, lists the expected files, installs with `dpkg -i` on a machine without
//! systemd as PID 1, runs, and purges cleanly (root only).

use std::process::Command;

struct Purge;

impl Drop for Purge {
    fn drop(&mut self) {
        let _ = Command::new("dpkg")
            .args(["--purge", "netbird-agent"])
            .output();
    }
}

#[test]
fn deb_builds_installs_and_purges() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: installing a package needs root");
        return;
    }
    if Command::new("dpkg-deb").arg("--version").output().is_err() {
        eprintln!("skipped: dpkg-deb is missing");
        return;
    }
    // Under the target directory: /tmp is small on some CI machines.
    let out_dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let build = Command::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/packaging/build-deb.sh"
    ))
    .arg(env!("CARGO_BIN_EXE_netbird-agent"))
    .arg(out_dir.path())
    .output()
    .unwrap();
    assert!(
        build.status.success(),
        "{}",
        String::from_utf8_lossy(&build.stderr)
    );
    let deb = String::from_utf8_lossy(&build.stdout).trim().to_string();
    let list = Command::new("dpkg").args(["-c", &deb]).output().unwrap();
    let list = String::from_utf8_lossy(&list.stdout).to_string();
    for want in [
        "./usr/bin/netbird-agent",
        "./lib/systemd/system/netbird-agent.service",
        "./usr/share/bash-completion/completions/netbird-agent",
        "./usr/share/zsh/vendor-completions/_netbird-agent",
        "./usr/share/fish/vendor_completions.d/netbird-agent.fish",
        "./var/lib/netbird-agent/",
        "./etc/netbird-agent/",
    ] {
        assert!(list.contains(want), "{want} missing from:\n{list}");
    }
    let _purge = Purge;
    let install = Command::new("dpkg").args(["-i", &deb]).output().unwrap();
    assert!(
        install.status.success(),
        "{}{}",
        String::from_utf8_lossy(&install.stdout),
        String::from_utf8_lossy(&install.stderr)
    );
    let v = Command::new("/usr/bin/netbird-agent")
        .arg("version")
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&v.stdout).trim(),
        env!("CARGO_PKG_VERSION")
    );
    let mode = std::fs::metadata("/var/lib/netbird-agent")
        .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o777);
    assert_eq!(mode.unwrap(), 0o700);
    let purge = Command::new("dpkg")
        .args(["--purge", "netbird-agent"])
        .output()
        .unwrap();
    assert!(
        purge.status.success(),
        "{}",
        String::from_utf8_lossy(&purge.stderr)
    );
    assert!(!std::path::Path::new("/usr/bin/netbird-agent").exists());
    assert!(!std::path::Path::new("/lib/systemd/system/netbird-agent.service").exists());
}
