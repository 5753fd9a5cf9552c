//! Config files: 0600 permissions, atomic rewrite, upstream import keeps the identity.

use netbird_agent::config::{import_upstream, Config};
use std::os::unix::fs::PermissionsExt;

#[test]
fn first_run_creates_key_and_writes_0600() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sub/config.json");
    let (cfg, created) = Config::load_or_create(&path, &[]).unwrap();
    assert!(created);
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let dir_mode = std::fs::metadata(path.parent().unwrap())
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(dir_mode, 0o700);
    // The same identity comes back on the next run.
    let (again, created) = Config::load_or_create(&path, &[]).unwrap();
    assert!(!created);
    assert_eq!(again.public_key(), cfg.public_key());
    assert_eq!(cfg.interface_name, "wt0");
    assert_eq!(cfg.wireguard_port, 51820);
}

#[test]
fn rewrite_keeps_0600_even_over_a_loose_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.json");
    std::fs::write(&path, "{}").unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    Config::new_default().save(&path).unwrap();
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    // No temp files are left behind.
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 1, "{names:?}");
}

#[test]
fn malformed_config_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.json");
    std::fs::write(&path, "{not json").unwrap();
    let err = Config::load(&path).unwrap_err().to_string();
    assert!(err.contains("malformed"), "{err}");
}

const UPSTREAM: &str = r#"{
  "PrivateKey": "lI/mA/YdwDa1xZbcCf484/PTDckPAkyF88gtssyrZ50=",
  "PreSharedKey": "",
  "ManagementURL": {"Scheme": "https", "Opaque": "", "User": null, "Host": "nb.example.com:33073", "Path": "", "RawPath": ""},
  "AdminURL": {"Scheme": "https", "Host": "nb.example.com", "Path": ""},
  "WgIface": "wt0",
  "WgPort": 51821,
  "IFaceBlackList": ["wt0"],
  "SSHKey": "-----BEGIN PRIVATE KEY-----\n...\n-----END PRIVATE KEY-----\n"
}"#;

#[test]
fn importing_upstream_config_keeps_identity_and_server() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = dir.path().join("default.json");
    std::fs::write(&upstream, UPSTREAM).unwrap();
    let cfg = import_upstream(&upstream).unwrap();
    assert_eq!(
        cfg.public_key().to_base64(),
        "NH42vYcGCVlEt60BKV4KaXevr1JQknXun2zsOQM9iA8="
    );
    assert_eq!(cfg.management_url, "https://nb.example.com:33073");
    assert_eq!(cfg.admin_url, "https://nb.example.com:443");
    assert_eq!(cfg.wireguard_port, 51821);

    // First run with an upstream config present adopts it instead of making a new key.
    let ours = dir.path().join("ours/config.json");
    let (cfg, created) =
        Config::load_or_create(&ours, &[dir.path().join("missing.json"), upstream]).unwrap();
    assert!(created);
    assert_eq!(
        cfg.public_key().to_base64(),
        "NH42vYcGCVlEt60BKV4KaXevr1JQknXun2zsOQM9iA8="
    );
    assert_eq!(
        std::fs::metadata(&ours).unwrap().permissions().mode() & 0o777,
        0o600
    );
    // The private key is in the file but never in Debug output.
    assert!(!format!("{cfg:?}").contains("lI/mA/Yd"));
}

#[test]
fn broken_upstream_config_falls_back_to_a_new_key() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = dir.path().join("default.json");
    std::fs::write(&upstream, r#"{"PrivateKey": "short"}"#).unwrap();
    let (cfg, created) = Config::load_or_create(&dir.path().join("c.json"), &[upstream]).unwrap();
    assert!(created);
    assert_ne!(
        cfg.public_key().to_base64(),
        "NH42vYcGCVlEt60BKV4KaXevr1JQknXun2zsOQM9iA8="
    );
}
