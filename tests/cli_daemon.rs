//! End to end through the binary: CLI -> unix socket -> daemon -> testbed management.

use netbird_agent::testbed::{SetupKeySpec, Testbed, TestbedConfig};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_netbird-agent");

fn run(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env_remove("NB_MANAGEMENT_URL")
        .env_remove("NB_SETUP_KEY")
        .output()
        .expect("binary runs")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A daemon process on a private socket; killed on drop.
struct DaemonProc {
    child: Child,
    socket: PathBuf,
    _dir: tempfile::TempDir,
}

impl DaemonProc {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let socket = dir.path().join("agent.sock");
        let child = Command::new(BIN)
            .args(["daemon", "--no-data-plane", "--daemon-addr"])
            .arg(format!("unix://{}", socket.display()))
            .arg("--config-dir")
            .arg(dir.path().join("state"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("daemon starts");
        for _ in 0..100 {
            if socket.exists() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(socket.exists(), "daemon socket appears");
        DaemonProc {
            child,
            socket,
            _dir: dir,
        }
    }

    fn addr(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    fn cli(&self, args: &[&str]) -> Output {
        let mut all: Vec<&str> = args.to_vec();
        let addr = self.addr();
        all.push("--daemon-addr");
        all.push(&addr);
        run(&all)
    }

    fn config_file(&self) -> PathBuf {
        self._dir.path().join("state/config.json")
    }
}

impl Drop for DaemonProc {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        for _ in 0..50 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn register_command_prints_the_network_map() {
    let rt = rt();
    let tb = rt
        .block_on(Testbed::start(TestbedConfig::default()))
        .unwrap();
    let key = tb
        .admin()
        .create_setup_key(SetupKeySpec::reusable("k"))
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg_dir = dir.path().to_str().unwrap();
    let url = tb.management_url();
    let o = run(&[
        "register",
        "-m",
        &url,
        "-k",
        &key.key,
        "--config-dir",
        cfg_dir,
        "-n",
        "first",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let out = text(&o);
    assert!(out.contains("Login: ok"), "{out}");
    assert!(out.contains("NetBird IP: 100.64."), "{out}");
    assert!(out.contains("FQDN: first.netbird.selfhosted"), "{out}");
    assert!(out.contains("Peers: 0 (0 offline)"), "{out}");
    // The setup key never shows up in output.
    assert!(!out.contains(&key.key));
    let cfg = std::fs::metadata(dir.path().join("config.json")).unwrap();
    assert_eq!(cfg.permissions().mode() & 0o777, 0o600);

    // A second peer, then the first one again without a key sees it.
    let dir2 = tempfile::tempdir().unwrap();
    let o = run(&[
        "register",
        "-m",
        &url,
        "-k",
        &key.key,
        "--config-dir",
        dir2.path().to_str().unwrap(),
        "-n",
        "second",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let o = run(&["register", "-m", &url, "--config-dir", cfg_dir]);
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    assert!(
        out.contains("Peers: 1 (0 offline)") && out.contains("second.netbird.selfhosted"),
        "{out}"
    );
    assert!(out.contains("Firewall rules: 2"), "{out}");
}

#[test]
fn register_command_errors_have_distinct_exit_codes() {
    let rt = rt();
    let tb = rt
        .block_on(Testbed::start(TestbedConfig::default()))
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg_dir = dir.path().to_str().unwrap();
    let url = tb.management_url();
    let unknown = uuid::Uuid::new_v4().to_string();
    let o = run(&[
        "register",
        "-m",
        &url,
        "-k",
        &unknown,
        "--config-dir",
        cfg_dir,
    ]);
    assert_eq!(o.status.code(), Some(5), "{}", text(&o));
    assert!(text(&o).contains("setup key is invalid"));
    assert_eq!(
        text(&o).lines().filter(|l| l.starts_with("error:")).count(),
        1
    );
    let o = run(&[
        "register",
        "-m",
        &url,
        "-k",
        "nope",
        "--config-dir",
        cfg_dir,
    ]);
    assert_eq!(o.status.code(), Some(5), "{}", text(&o));
    assert!(text(&o).contains("malformed"));
    let o = run(&["register", "-m", &url, "--config-dir", cfg_dir]);
    assert_eq!(o.status.code(), Some(4), "{}", text(&o));
    let o = run(&["register", "-m", "not a url", "--config-dir", cfg_dir]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = format!("http://{}", free.local_addr().unwrap());
    drop(free);
    let o = run(&[
        "register",
        "-m",
        &dead,
        "-k",
        &unknown,
        "--config-dir",
        cfg_dir,
    ]);
    assert_eq!(o.status.code(), Some(6), "{}", text(&o));
    let o = run(&["register", "--no-such-flag"]);
    assert_eq!(o.status.code(), Some(2));
}

fn wait_json_status(d: &DaemonProc, want: &str) -> serde_json::Value {
    let mut last = serde_json::Value::Null;
    for _ in 0..100 {
        let o = d.cli(&["status", "--json"]);
        if o.status.success() {
            last = serde_json::from_slice(&o.stdout).unwrap();
            if last["daemonStatus"] == want {
                return last;
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("status never became {want}: {last}");
}

#[test]
fn up_status_down_logout_through_the_daemon() {
    let rt = rt();
    let tb = rt
        .block_on(Testbed::start(TestbedConfig::default()))
        .unwrap();
    let admin = tb.admin();
    let key = admin.create_setup_key(SetupKeySpec::reusable("k")).unwrap();
    let url = tb.management_url();
    let d = DaemonProc::start();

    let st = d.cli(&["status"]);
    assert!(st.status.success(), "{}", text(&st));
    assert!(text(&st).contains("Daemon status: Idle"), "{}", text(&st));

    let o = d.cli(&["up", "-m", &url, "-k", &key.key, "-n", "daemon-peer"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("Connected"));
    assert_eq!(
        std::fs::metadata(d.config_file())
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600
    );

    // Another peer joins; status shows it.
    let _guard = rt.enter();
    let other =
        netbird_agent::mgmt::MgmtClient::new(&url, netbird_agent::crypto::PrivateKey::generate())
            .unwrap();
    let meta = netbird_agent::system::build_meta(
        &netbird_agent::system::HostFacts::gather(),
        &netbird_agent::system::MetaOptions {
            hostname_override: Some("other".into()),
            ..Default::default()
        },
    );
    rt.block_on(other.login(
        meta,
        &netbird_agent::mgmt::LoginParams {
            setup_key: Some(key.key.clone()),
            ..Default::default()
        },
    ))
    .unwrap();
    let mut doc = serde_json::Value::Null;
    for _ in 0..100 {
        doc = wait_json_status(&d, "Connected");
        if doc["peers"]["total"] == 1 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(doc["peers"]["total"], 1, "{doc}");
    assert_eq!(
        doc["peers"]["details"][0]["fqdn"],
        "other.netbird.selfhosted"
    );
    assert_eq!(doc["management"]["connected"], true);
    assert_eq!(doc["management"]["url"], url.as_str());
    assert!(doc["netbirdIp"].as_str().unwrap().starts_with("100.64."));
    assert_eq!(doc["fqdn"], "daemon-peer.netbird.selfhosted");
    let text_status = text(&d.cli(&["status", "-d"]));
    assert!(
        text_status.contains("Peers detail:") && text_status.contains(" other.netbird.selfhosted:"),
        "{text_status}"
    );
    assert!(
        text_status.contains("Peers count: 0/1 Connected"),
        "{text_status}"
    );
    let yaml = d.cli(&["status", "--yaml"]);
    assert!(text(&yaml).contains("daemonStatus: Connected"));
    // Secrets never appear in status or the config the daemon serves.
    let cfg_text = std::fs::read_to_string(d.config_file()).unwrap();
    let private: serde_json::Value = serde_json::from_str(&cfg_text).unwrap();
    let pk = private["private_key"].as_str().unwrap();
    assert!(
        !text_status.contains(pk) && !text(&yaml).contains(pk) && !text_status.contains(&key.key)
    );

    // A second up while up: one line, its own exit code.
    let o = d.cli(&["up"]);
    assert_eq!(o.status.code(), Some(10), "{}", text(&o));

    let o = d.cli(&["down"]);
    assert!(o.status.success(), "{}", text(&o));
    wait_json_status(&d, "Idle");
    let o = d.cli(&["down"]);
    assert_eq!(o.status.code(), Some(11), "{}", text(&o));

    // Up again: registered, so no key is needed.
    let o = d.cli(&["up"]);
    assert!(o.status.success(), "{}", text(&o));
    wait_json_status(&d, "Connected");

    // Logout deregisters: the server forgets us and status asks for a login.
    let o = d.cli(&["logout"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(!admin
        .list_peers()
        .iter()
        .any(|p| p.hostname == "daemon-peer"));
    let st = text(&d.cli(&["status"]));
    assert!(st.contains("Daemon status: NeedsLogin"), "{st}");
    let o = d.cli(&["up"]);
    assert_eq!(o.status.code(), Some(11), "{}", text(&o));
}

#[test]
fn bad_input_gives_one_line_and_distinct_codes() {
    let rt = rt();
    let tb = rt
        .block_on(Testbed::start(TestbedConfig::default()))
        .unwrap();
    let d = DaemonProc::start();
    let o = d.cli(&["up", "-m", "htp:/broken"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let o = d.cli(&[
        "up",
        "-m",
        &tb.management_url(),
        "-k",
        &uuid::Uuid::new_v4().to_string(),
    ]);
    assert_eq!(o.status.code(), Some(5), "{}", text(&o));
    assert_eq!(text(&o).trim().lines().count(), 1, "{}", text(&o));
    let o = run(&["status", "--daemon-addr", "unix:///nonexistent/agent.sock"]);
    assert_eq!(o.status.code(), Some(8), "{}", text(&o));
    assert_eq!(text(&o).trim().lines().count(), 1);
    let o = run(&["up", "--bogus"]);
    assert_eq!(o.status.code(), Some(2));
    let o = d.cli(&["networks", "list"]);
    assert!(o.status.success(), "{}", text(&o));
}

#[test]
fn non_root_callers_may_read_but_not_change_state() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: needs root to run the CLI as another user");
        return;
    }
    let rt = rt();
    let tb = rt
        .block_on(Testbed::start(TestbedConfig::default()))
        .unwrap();
    let key = tb
        .admin()
        .create_setup_key(SetupKeySpec::reusable("k"))
        .unwrap();
    let d = DaemonProc::start();
    let as_nobody = |args: &[&str]| {
        use std::os::unix::process::CommandExt;
        let addr = d.addr();
        Command::new(BIN)
            .args(args)
            .args(["--daemon-addr", &addr])
            .uid(65534)
            .gid(65534)
            .output()
            .unwrap()
    };
    let o = as_nobody(&["up", "-m", &tb.management_url(), "-k", &key.key]);
    assert_eq!(o.status.code(), Some(9), "{}", text(&o));
    assert!(text(&o).contains("may not change"), "{}", text(&o));
    let o = as_nobody(&["down"]);
    assert_eq!(o.status.code(), Some(9), "{}", text(&o));
    // Reading is allowed.
    let o = as_nobody(&["status"]);
    assert!(o.status.success(), "{}", text(&o));
    // Root can.
    let o = d.cli(&["up", "-m", &tb.management_url(), "-k", &key.key]);
    assert!(o.status.success(), "{}", text(&o));
    let o = as_nobody(&["down"]);
    assert_eq!(o.status.code(), Some(9), "{}", text(&o));
    assert!(tb.admin().list_peers().len() == 1);
    let _ = Path::new("/");
}

#[test]
fn debug_bundle_is_written_without_secrets() {
    let d = DaemonProc::start();
    let o = d.cli(&["debug", "bundle", "-A"]);
    assert!(o.status.success(), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    let path = out.lines().nth(1).unwrap().trim().to_string();
    assert!(path.ends_with(".zip"), "{out}");
    let meta = std::fs::metadata(&path).unwrap();
    assert!(meta.len() > 0);
    std::fs::remove_file(&path).unwrap();
}
