//! The built-in lab: the testbed servers in a "WAN" network namespace, every peer in its own
//! namespace behind its own NAT router (nftables masquerade), a daemon per peer joined with a
//! setup key through the ordinary CLI, a ping across the tunnel, and each agent's status.
//! Everything it creates is removed on exit, also on error and Ctrl-C.

pub mod netns;

use netns::Topology;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Errors running the lab.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// Not root, or a tool is missing.
    #[error("{0}")]
    Precondition(String),
    /// A setup step failed.
    #[error("{0}")]
    Setup(String),
    /// The agents did not connect or the ping failed.
    #[error("{0}")]
    Failed(String),
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Makes Ctrl-C and SIGTERM stop the lab at its next wait, so cleanup runs.
pub fn install_interrupt_handler() {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
    let action = SigAction::new(
        SigHandler::Handler(on_signal),
        SaFlags::empty(),
        SigSet::empty(),
    );
    for sig in [Signal::SIGINT, Signal::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        let _ = unsafe { sigaction(sig, &action) };
    }
}

fn check_interrupted() -> Result<(), LabError> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        Err(LabError::Failed("interrupted".into()))
    } else {
        Ok(())
    }
}

/// Lab options.
#[derive(Debug, Clone, Default)]
pub struct LabOptions {
    /// The agent binary (this executable).
    pub binary: PathBuf,
    /// Number of peers (2 or more).
    pub peers: usize,
    /// How long to wait for connections.
    pub timeout: Duration,
    /// Block UDP between the NAT routers (forces the relay).
    pub block_udp: bool,
    /// Run coturn in the WAN namespace and advertise it as the TURN server.
    pub turn: bool,
    /// Do not advertise the NetBird relay (with `block_udp`, only TURN connects the peers).
    pub no_relay: bool,
}

/// A child process stopped with SIGTERM (then SIGKILL) on drop.
pub struct Proc {
    name: String,
    child: Child,
}

impl Proc {
    fn spawn(name: &str, cmd: &mut Command) -> Result<Proc, LabError> {
        let child = cmd
            .spawn()
            .map_err(|e| LabError::Setup(format!("starting {name}: {e}")))?;
        Ok(Proc {
            name: name.into(),
            child,
        })
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(pid) = i32::try_from(self.child.id()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        tracing::warn!("{} did not stop on SIGTERM; killing it", self.name);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Checks what the lab needs.
pub fn preflight() -> Result<(), LabError> {
    if !nix::unistd::geteuid().is_root() {
        return Err(LabError::Precondition(
            "the lab needs root (network namespaces, TUN devices, nftables)".into(),
        ));
    }
    for tool in ["ip", "nft", "ping"] {
        if which(tool).is_none() {
            return Err(LabError::Precondition(format!(
                "`{tool}` is missing: run scripts/install-deps.sh"
            )));
        }
    }
    if !Path::new("/dev/net/tun").exists() {
        return Err(LabError::Precondition("/dev/net/tun is missing".into()));
    }
    Ok(())
}

fn which(tool: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_string_lossy()
        .split(':')
        .map(|d| Path::new(d).join(tool))
        .chain(
            ["/usr/sbin", "/sbin"]
                .iter()
                .map(|d| Path::new(d).join(tool)),
        )
        .find(|p| p.exists())
}

/// A running lab: topology, servers and daemons (dropped in reverse order).
pub struct Lab {
    /// Daemons, one per peer.
    pub daemons: Vec<Proc>,
    /// The testbed server process.
    pub testbed: Option<Proc>,
    /// Namespaces and links.
    pub topo: Topology,
    /// Work directory (sockets, configs).
    pub dir: tempfile::TempDir,
    opts: LabOptions,
    setup_key: String,
}

impl Drop for Lab {
    fn drop(&mut self) {
        if std::env::var_os("NB_LAB_KEEP_LOGS").is_some() {
            for i in 1..=self.opts.peers {
                let log = self.dir.path().join(format!("peer{i}.log"));
                let _ = std::fs::copy(
                    &log,
                    format!("/tmp/nb-lab-{}-peer{i}.log", self.topo.prefix),
                );
            }
        }
        self.daemons.clear();
        self.testbed.take();
    }
}

/// What the lab measured.
#[derive(Debug, Clone)]
pub struct LabReport {
    /// Seconds from the first `up` to the first ping reply.
    pub first_ping_after: Duration,
    /// Overlay IPs of the peers.
    pub overlay_ips: Vec<String>,
}

impl Lab {
    /// Builds the topology and starts the testbed.
    pub fn start(opts: LabOptions) -> Result<Lab, LabError> {
        preflight()?;
        if opts.peers < 2 {
            return Err(LabError::Precondition(
                "the lab needs at least 2 peers".into(),
            ));
        }
        let topo = Topology::build(opts.peers, opts.block_udp).map_err(LabError::Setup)?;
        let dir = tempfile::Builder::new()
            .prefix("netbird-agent-lab")
            .tempdir()
            .map_err(|e| LabError::Setup(format!("work dir: {e}")))?;
        let server = topo.server_ip();
        let mut tb_cmd = topo.exec_in(&topo.wan, &opts.binary);
        tb_cmd
            .args([
                "testbed",
                "--management-addr",
                &format!("{server}:33073"),
                "--admin-addr",
                &format!("{server}:33071"),
            ])
            .args([
                "--signal-addr",
                &format!("{server}:10000"),
                "--relay-addr",
                &format!("{server}:33080"),
            ])
            .args(["--stun-addr", &format!("{server}:3478")])
            .args(
                opts.turn
                    .then(|| ["--turn-addr".to_string(), format!("{server}:3480")])
                    .into_iter()
                    .flatten(),
            )
            .args(opts.no_relay.then_some("--no-relay"))
            .arg("--create-setup-key")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut testbed = Proc::spawn("testbed", &mut tb_cmd)?;
        let setup_key = read_setup_key(&mut testbed)?;
        Ok(Lab {
            daemons: Vec::new(),
            testbed: Some(testbed),
            topo,
            dir,
            opts,
            setup_key,
        })
    }

    fn socket(&self, i: usize) -> String {
        format!(
            "unix://{}",
            self.dir.path().join(format!("peer{i}.sock")).display()
        )
    }

    fn cli(&self, i: usize, args: &[&str]) -> Result<String, LabError> {
        let out = Command::new(&self.opts.binary)
            .args(args)
            .args(["--daemon-addr", &self.socket(i)])
            .output()
            .map_err(|e| LabError::Setup(format!("running the CLI: {e}")))?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() {
            Ok(text)
        } else {
            Err(LabError::Failed(format!(
                "`netbird-agent {}` for peer{i} failed: {}{}",
                args.join(" "),
                text,
                String::from_utf8_lossy(&out.stderr)
            )))
        }
    }

    /// Starts a daemon in every peer namespace and brings each up with the setup key, then
    /// waits until the first peer pings the second across the tunnel.
    pub fn run(&mut self) -> Result<LabReport, LabError> {
        let started = Instant::now();
        for i in 1..=self.opts.peers {
            let ns = self.topo.peer_ns(i);
            let mut cmd = self.topo.exec_in(&ns, &self.opts.binary);
            cmd.args(["daemon", "--daemon-addr", &self.socket(i), "--config-dir"])
                .arg(self.dir.path().join(format!("peer{i}")))
                .stdout(Stdio::null())
                .stderr(Stdio::from(
                    std::fs::File::create(self.dir.path().join(format!("peer{i}.log")))
                        .map_err(|e| LabError::Setup(format!("log file: {e}")))?,
                ));
            self.daemons
                .push(Proc::spawn(&format!("daemon peer{i}"), &mut cmd)?);
        }
        for i in 1..=self.opts.peers {
            let sock = self.dir.path().join(format!("peer{i}.sock"));
            wait_for(Duration::from_secs(10), || sock.exists()).map_err(|_| {
                LabError::Setup(format!("daemon of peer{i} did not open its socket"))
            })?;
        }
        let url = format!("http://{}:33073", self.topo.server_ip());
        for i in 1..=self.opts.peers {
            let name = format!("peer{i}");
            self.cli(
                i,
                &[
                    "up",
                    "-m",
                    &url,
                    "-k",
                    &self.setup_key,
                    "-n",
                    &name,
                    "--interface-name",
                    "wt0",
                ],
            )?;
        }
        let mut ips = Vec::new();
        for i in 1..=self.opts.peers {
            let doc: serde_json::Value = serde_json::from_str(&self.cli(i, &["status", "--json"])?)
                .map_err(|e| LabError::Failed(format!("status of peer{i}: {e}")))?;
            let ip = doc["netbirdIp"]
                .as_str()
                .unwrap_or("")
                .split('/')
                .next()
                .unwrap_or("")
                .to_string();
            ips.push(ip);
        }
        let target = ips.get(1).cloned().unwrap_or_default();
        let ns1 = self.topo.peer_ns(1);
        let deadline = Instant::now() + self.opts.timeout;
        loop {
            let ok = Command::new("ip")
                // One reply ends it; probes every 20 ms so the figure is not rounded up to
                // ping's one-second default interval.
                .args([
                    "netns", "exec", &ns1, "ping", "-n", "-q", "-c", "1", "-i", "0.02", "-w", "2",
                    &target,
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if ok {
                break;
            }
            check_interrupted()?;
            if Instant::now() > deadline {
                return Err(LabError::Failed(format!(
                    "peer1 could not ping peer2 ({target}) within {:?}; daemon logs are in {}",
                    self.opts.timeout,
                    self.dir.path().display()
                )));
            }
        }
        Ok(LabReport {
            first_ping_after: started.elapsed(),
            overlay_ips: ips,
        })
    }

    /// `status -d` of peer `i`.
    pub fn status(&self, i: usize) -> Result<String, LabError> {
        self.cli(i, &["status", "-d"])
    }

    /// Runs a command in peer `i`'s namespace.
    pub fn exec(
        &self,
        i: usize,
        program: &str,
        args: &[&str],
    ) -> Result<std::process::Output, LabError> {
        Command::new("ip")
            .args(["netns", "exec", &self.topo.peer_ns(i), program])
            .args(args)
            .output()
            .map_err(|e| LabError::Setup(format!("{program}: {e}")))
    }

    /// PID of the testbed process (signals restart its services).
    pub fn testbed_pid(&self) -> Option<u32> {
        self.testbed.as_ref().map(|p| p.child.id())
    }

    /// Runs iperf3 from peer1 to `target` for `secs` seconds; returns Gbit/s received.
    pub fn iperf(&mut self, target: &str, secs: u64) -> Result<f64, LabError> {
        let ns2 = self.topo.peer_ns(2);
        let mut server = Command::new("ip");
        server
            .args(["netns", "exec", &ns2, "iperf3", "-s", "-1", "-B", target])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let _server = Proc::spawn("iperf3 server", &mut server)?;
        std::thread::sleep(Duration::from_millis(500));
        let out = self.exec(1, "iperf3", &["-c", target, "-t", &secs.to_string(), "-J"])?;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)
            .map_err(|e| LabError::Failed(format!("iperf3 output: {e}")))?;
        v["end"]["sum_received"]["bits_per_second"]
            .as_f64()
            .map(|b| b / 1e9)
            .ok_or_else(|| LabError::Failed("iperf3 reported no result".into()))
    }

    /// Work directory with logs.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

fn read_setup_key(p: &mut Proc) -> Result<String, LabError> {
    use std::io::BufRead;
    let stdout = p
        .child
        .stdout
        .take()
        .ok_or_else(|| LabError::Setup("testbed has no stdout".into()))?;
    let mut reader = std::io::BufReader::new(stdout);
    let mut line = String::new();
    loop {
        line.clear();
        let n = reader
            .read_line(&mut line)
            .map_err(|e| LabError::Setup(format!("reading testbed output: {e}")))?;
        if n == 0 {
            return Err(LabError::Setup(
                "the testbed exited before printing a setup key".into(),
            ));
        }
        if let Some(k) = line.trim().strip_prefix("setup key: ") {
            let key = k.to_string();
            // Keep draining its stdout so it never blocks on a full pipe.
            std::thread::spawn(move || for _ in reader.lines() {});
            return Ok(key);
        }
    }
}

fn wait_for(limit: Duration, mut f: impl FnMut() -> bool) -> Result<(), ()> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if f() {
            return Ok(());
        }
        if INTERRUPTED.load(Ordering::SeqCst) {
            return Err(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(())
}
