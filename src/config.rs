//! The agent's config file: identity key, server URLs, interface settings and local flags.
//!
//! Written 0600 with an atomic rename so a crash never leaves a half-written key. The directory
//! defaults to `/var/lib/netbird-agent` and is overridden by `--config-dir` or
//! `NB_AGENT_CONFIG_DIR`, so tests run as an ordinary user.

use crate::crypto::{CryptoError, PrivateKey, PublicKey};
use serde::{Deserialize, Serialize};
use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Default state/config directory for a system install.
pub const DEFAULT_CONFIG_DIR: &str = "/var/lib/netbird-agent";
/// Environment variable that overrides the config directory.
pub const CONFIG_DIR_ENV: &str = "NB_AGENT_CONFIG_DIR";
/// Config file name inside the config directory.
pub const CONFIG_FILE: &str = "config.json";
/// NetBird's default management URL.
pub const DEFAULT_MANAGEMENT_URL: &str = "https://api.netbird.io:443";
/// NetBird's default admin (dashboard) URL.
pub const DEFAULT_ADMIN_URL: &str = "https://app.netbird.io:443";
/// Default WireGuard interface name.
pub const DEFAULT_INTERFACE: &str = "wt0";
/// Default WireGuard listen port.
pub const DEFAULT_WG_PORT: u16 = 51820;
/// Where the upstream Go client keeps its config (new, then legacy location).
pub const UPSTREAM_CONFIG_PATHS: [&str; 2] =
    ["/var/lib/netbird/default.json", "/etc/netbird/config.json"];

/// Errors reading, validating or writing the config.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Filesystem failure, with the path involved.
    #[error("{op} {path}: {source}")]
    Io {
        /// What we were doing.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file is not valid JSON of the expected shape.
    #[error("config {path} is malformed: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The JSON error.
        source: serde_json::Error,
    },
    /// A key in the file does not parse.
    #[error("config has an invalid key: {0}")]
    Key(#[from] CryptoError),
    /// A management or admin URL is not `http(s)://host[:port]`.
    #[error("invalid URL {0:?}: expected http(s)://host[:port]")]
    Url(String),
}

/// Local switches that NetBird reports to management in `PeerSystemMeta.flags`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct LocalFlags {
    /// Do not install routes offered by other peers.
    pub disable_client_routes: bool,
    /// Do not act as a routing peer.
    pub disable_server_routes: bool,
    /// Do not run the DNS resolver or change host DNS.
    pub disable_dns: bool,
    /// Do not manage the firewall.
    pub disable_firewall: bool,
    /// Block access to local networks from routed traffic.
    pub block_lan_access: bool,
    /// Drop all inbound traffic from peers.
    pub block_inbound: bool,
    /// Never use IPv6 overlay addresses.
    pub disable_ipv6: bool,
    /// Allow NetBird SSH (we do not run an SSH server; reported as set).
    pub server_ssh_allowed: bool,
}

/// The persisted agent configuration.
#[derive(Clone, Serialize, Deserialize)]
pub struct Config {
    /// Management service URL, `https://host:port`.
    pub management_url: String,
    /// Dashboard URL, shown to users.
    pub admin_url: String,
    /// The WireGuard private key: the peer's identity. Never logged.
    #[serde(with = "private_key_b64")]
    pub private_key: PrivateKey,
    /// Optional pre-shared key applied to every peer. Never logged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pre_shared_key: Option<String>,
    /// WireGuard interface name.
    pub interface_name: String,
    /// WireGuard listen port.
    pub wireguard_port: u16,
    /// MTU override (None = server value, else 1280).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u16>,
    /// Hostname reported instead of the OS hostname.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// Extra DNS labels requested at login.
    #[serde(default)]
    pub dns_labels: Vec<String>,
    /// Local flags reported to management.
    #[serde(default)]
    pub flags: LocalFlags,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("management_url", &self.management_url)
            .field("admin_url", &self.admin_url)
            .field("public_key", &self.private_key.public_key())
            .field(
                "pre_shared_key",
                &self.pre_shared_key.as_ref().map(|_| "<redacted>"),
            )
            .field("interface_name", &self.interface_name)
            .field("wireguard_port", &self.wireguard_port)
            .field("mtu", &self.mtu)
            .field("hostname", &self.hostname)
            .field("flags", &self.flags)
            .finish()
    }
}

mod private_key_b64 {
    use crate::crypto::PrivateKey;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(k: &PrivateKey, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&k.to_base64())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<PrivateKey, D::Error> {
        let s = String::deserialize(d)?;
        PrivateKey::from_base64(&s).map_err(serde::de::Error::custom)
    }
}

impl Config {
    /// A new config with a freshly generated key and NetBird's defaults.
    pub fn new_default() -> Self {
        Config {
            management_url: DEFAULT_MANAGEMENT_URL.into(),
            admin_url: DEFAULT_ADMIN_URL.into(),
            private_key: PrivateKey::generate(),
            pre_shared_key: None,
            interface_name: DEFAULT_INTERFACE.into(),
            wireguard_port: DEFAULT_WG_PORT,
            mtu: None,
            hostname: None,
            dns_labels: Vec::new(),
            flags: LocalFlags::default(),
        }
    }

    /// Our WireGuard public key.
    pub fn public_key(&self) -> PublicKey {
        self.private_key.public_key()
    }

    /// Reads a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = fs::read_to_string(path).map_err(|source| ConfigError::Io {
            op: "reading",
            path: path.into(),
            source,
        })?;
        let cfg: Config = serde_json::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.into(),
            source,
        })?;
        normalize_url(&cfg.management_url)?;
        Ok(cfg)
    }

    /// Loads the config, or on first run creates one (importing an upstream NetBird identity
    /// when one of `import_from` exists) and saves it.
    pub fn load_or_create(
        path: &Path,
        import_from: &[PathBuf],
    ) -> Result<(Self, bool), ConfigError> {
        if path.exists() {
            return Ok((Self::load(path)?, false));
        }
        let cfg = import_from
            .iter()
            .filter(|p| p.exists())
            .find_map(|p| match import_upstream(p) {
                Ok(c) => Some(c),
                Err(e) => {
                    tracing::warn!("not importing upstream config {}: {e}", p.display());
                    None
                }
            })
            .unwrap_or_else(Config::new_default);
        cfg.save(path)?;
        Ok((cfg, true))
    }

    /// Writes the config 0600 via a temp file in the same directory and an atomic rename.
    pub fn save(&self, path: &Path) -> Result<(), ConfigError> {
        let json = serde_json::to_vec_pretty(self).map_err(|source| ConfigError::Parse {
            path: path.into(),
            source,
        })?;
        write_secret_file(path, &json)
    }
}

/// Writes `data` to `path` atomically with mode 0600, creating the directory (0700) if needed.
pub fn write_secret_file(path: &Path, data: &[u8]) -> Result<(), ConfigError> {
    let io = |op: &'static str, p: &Path| {
        let p = p.to_path_buf();
        move |source| ConfigError::Io {
            op,
            path: p,
            source,
        }
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    if !dir.as_os_str().is_empty() && !dir.exists() {
        fs::create_dir_all(dir).map_err(io("creating directory", dir))?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
            .map_err(io("setting permissions of", dir))?;
    }
    let file_name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("config");
    let tmp = dir.join(format!(".{file_name}.tmp.{}", std::process::id()));
    let result = (|| {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io("creating", &tmp))?;
        // A pre-existing temp file keeps its old mode through O_CREAT; force 0600.
        f.set_permissions(fs::Permissions::from_mode(0o600))
            .map_err(io("setting permissions of", &tmp))?;
        f.write_all(data).map_err(io("writing", &tmp))?;
        f.sync_all().map_err(io("syncing", &tmp))?;
        fs::rename(&tmp, path).map_err(io("renaming into", path))?;
        if let Ok(d) = fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Resolves the config directory: explicit flag, then `NB_AGENT_CONFIG_DIR`, then the default.
pub fn config_dir(flag: Option<&Path>) -> PathBuf {
    if let Some(p) = flag {
        return p.to_path_buf();
    }
    match std::env::var_os(CONFIG_DIR_ENV) {
        Some(v) if !v.is_empty() => PathBuf::from(v),
        _ => PathBuf::from(DEFAULT_CONFIG_DIR),
    }
}

/// Validates a management/admin URL and returns it as `scheme://host:port`, filling the default
/// port (443 for https, 80 for http) as NetBird does. Paths are dropped: only host:port is dialled.
pub fn normalize_url(url: &str) -> Result<String, ConfigError> {
    let bad = || ConfigError::Url(url.to_string());
    let (scheme, rest) = url.split_once("://").ok_or_else(bad)?;
    let default_port = match scheme {
        "https" => 443,
        "http" => 80,
        _ => return Err(bad()),
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    if authority.is_empty() || authority.contains('@') || authority.contains(char::is_whitespace) {
        return Err(bad());
    }
    let (host, port) = split_host_port(authority).ok_or_else(bad)?;
    let port = port.unwrap_or(default_port);
    Ok(format!("{scheme}://{host}:{port}"))
}

fn split_host_port(authority: &str) -> Option<(String, Option<u16>)> {
    if let Some(rest) = authority.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p.parse().ok()?),
            None if after.is_empty() => None,
            None => return None,
        };
        return Some((format!("[{host}]"), port));
    }
    match authority.rsplit_once(':') {
        Some((h, p)) if !h.is_empty() && !h.contains(':') => {
            Some((h.to_string(), Some(p.parse().ok()?)))
        }
        Some(_) => None,
        None => Some((authority.to_string(), None)),
    }
}

/// The parts of an upstream NetBird client config we carry over.
#[derive(Deserialize)]
struct UpstreamConfig {
    #[serde(rename = "PrivateKey")]
    private_key: String,
    #[serde(rename = "PreSharedKey", default)]
    pre_shared_key: String,
    #[serde(rename = "ManagementURL", default)]
    management_url: Option<UpstreamUrl>,
    #[serde(rename = "AdminURL", default)]
    admin_url: Option<UpstreamUrl>,
    #[serde(rename = "WgIface", default)]
    wg_iface: String,
    #[serde(rename = "WgPort", default)]
    wg_port: u16,
}

/// Go serialises `url.URL` as an object; older configs may hold a plain string.
#[derive(Deserialize)]
#[serde(untagged)]
enum UpstreamUrl {
    Object {
        #[serde(rename = "Scheme")]
        scheme: String,
        #[serde(rename = "Host")]
        host: String,
    },
    Text(String),
}

impl UpstreamUrl {
    fn to_url(&self) -> Option<String> {
        let text = match self {
            UpstreamUrl::Object { scheme, host } if !host.is_empty() => {
                format!("{scheme}://{host}")
            }
            UpstreamUrl::Text(s) if !s.is_empty() => s.clone(),
            _ => return None,
        };
        normalize_url(&text).ok()
    }
}

/// Builds our config from an upstream NetBird client config, keeping its WireGuard key (the
/// peer identity) so a user switching from the Go client is not registered again.
pub fn import_upstream(path: &Path) -> Result<Config, ConfigError> {
    let text = fs::read_to_string(path).map_err(|source| ConfigError::Io {
        op: "reading",
        path: path.into(),
        source,
    })?;
    let up: UpstreamConfig = serde_json::from_str(&text).map_err(|source| ConfigError::Parse {
        path: path.into(),
        source,
    })?;
    let mut cfg = Config::new_default();
    cfg.private_key = PrivateKey::from_base64(&up.private_key)?;
    if let Some(u) = up.management_url.as_ref().and_then(UpstreamUrl::to_url) {
        cfg.management_url = u;
    }
    if let Some(u) = up.admin_url.as_ref().and_then(UpstreamUrl::to_url) {
        cfg.admin_url = u;
    }
    if !up.pre_shared_key.is_empty() {
        cfg.pre_shared_key = Some(up.pre_shared_key);
    }
    if !up.wg_iface.is_empty() {
        cfg.interface_name = up.wg_iface;
    }
    if up.wg_port != 0 {
        cfg.wireguard_port = up.wg_port;
    }
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_normalisation() {
        assert_eq!(
            normalize_url("https://api.netbird.io").unwrap(),
            "https://api.netbird.io:443"
        );
        assert_eq!(
            normalize_url("http://127.0.0.1:33073").unwrap(),
            "http://127.0.0.1:33073"
        );
        assert_eq!(normalize_url("http://h/some/path").unwrap(), "http://h:80");
        assert_eq!(normalize_url("http://[::1]:5").unwrap(), "http://[::1]:5");
        for bad in [
            "api.netbird.io",
            "ftp://x",
            "https://",
            "https://h:notaport",
            "https://a b",
        ] {
            assert!(normalize_url(bad).is_err(), "{bad} should be rejected");
        }
    }

    #[test]
    fn config_debug_redacts_secrets() {
        let mut c = Config::new_default();
        c.pre_shared_key = Some("c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0MTI=".into());
        let shown = format!("{c:?}");
        assert!(!shown.contains(&c.private_key.to_base64()));
        assert!(!shown.contains("c2VjcmV0"));
    }
}
