//! WireGuard data plane: one [`WgDevice`] abstraction with a userspace implementation (boringtun's
//! `noise::Tunn` on a TUN device, one shared UDP socket) and a kernel implementation (generic
//! netlink to the `wireguard` link type).
//!
//! Configuration follows WireGuard's own model (the UAPI/netlink "set" operation): a
//! [`DeviceUpdate`] changes interface fields and carries per-peer [`PeerUpdate`]s, each of which
//! touches exactly one peer, so updating one peer never disturbs another's session. The pure
//! parts (allowed-IP lookup, the UAPI text protocol, datagram classification, netlink message
//! building) live in their own modules and are unit-tested without a device.

pub mod agent;
pub mod allowed_ips;
pub mod kernel;
pub mod link;
pub mod offload;
pub mod packet;
pub mod tun;
pub mod uapi;
pub mod udp;
pub mod userspace;

use crate::crypto::{PrivateKey, PublicKey};
use ipnet::IpNet;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

/// Default interface MTU used by the standalone mode (as wireguard-go does).
pub const DEFAULT_MTU: u16 = 1420;

/// Errors from WireGuard devices.
#[derive(Debug, thiserror::Error)]
pub enum WgError {
    /// An operating-system call failed.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// A netlink request failed or its answer was malformed.
    #[error("netlink: {0}")]
    Netlink(String),
    /// The requested configuration is invalid.
    #[error("invalid configuration: {0}")]
    Invalid(String),
    /// Kernel WireGuard cannot be used on this host.
    #[error("kernel WireGuard unavailable: {0}")]
    KernelUnavailable(String),
    /// The device was closed.
    #[error("device closed")]
    Closed,
}

/// A WireGuard pre-shared key (32 bytes). Never printed.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct PresharedKey(pub [u8; 32]);

impl fmt::Debug for PresharedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PresharedKey(<redacted>)")
    }
}

/// Which implementation backs a device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceKind {
    /// boringtun + TUN in this process.
    Userspace,
    /// The Linux kernel module, configured over generic netlink.
    Kernel,
}

/// One peer change, with WireGuard's "set" semantics (UAPI `public_key=` block / netlink
/// `WGDEVICE_A_PEERS` entry). Fields left `None` keep their current value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerUpdate {
    /// The peer's identity.
    pub public_key: PublicKey,
    /// Remove the peer (all other fields ignored).
    pub remove: bool,
    /// Only change an existing peer; do not create it.
    pub update_only: bool,
    /// New pre-shared key; all zeroes clears it.
    pub preshared_key: Option<PresharedKey>,
    /// New endpoint.
    pub endpoint: Option<SocketAddr>,
    /// New persistent keepalive interval in seconds (0 = off).
    pub persistent_keepalive: Option<u16>,
    /// Replace the allowed IPs with `allowed_ips` instead of adding to them.
    pub replace_allowed_ips: bool,
    /// Allowed IPs to add (or the full set with `replace_allowed_ips`).
    pub allowed_ips: Vec<IpNet>,
}

impl PeerUpdate {
    /// An update for `public_key` that changes nothing yet.
    pub fn new(public_key: PublicKey) -> Self {
        PeerUpdate {
            public_key,
            remove: false,
            update_only: false,
            preshared_key: None,
            endpoint: None,
            persistent_keepalive: None,
            replace_allowed_ips: false,
            allowed_ips: Vec::new(),
        }
    }
}

/// A device change: interface fields plus peer updates, applied in order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeviceUpdate {
    /// New private key; all zeroes removes it.
    pub private_key: Option<PrivateKeyBytes>,
    /// New UDP listen port (0 = pick a free one).
    pub listen_port: Option<u16>,
    /// New firewall mark for the UDP socket (0 = none).
    pub fwmark: Option<u32>,
    /// Remove all peers not named in `peers` first.
    pub replace_peers: bool,
    /// Peer changes.
    pub peers: Vec<PeerUpdate>,
}

/// A private key as raw bytes inside an update (zero = remove). Never printed.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct PrivateKeyBytes(pub [u8; 32]);

impl fmt::Debug for PrivateKeyBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PrivateKeyBytes(<redacted>)")
    }
}

/// The full configuration of one peer, as the engine wants it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerConfig {
    /// The peer's identity.
    pub public_key: PublicKey,
    /// Exactly these allowed IPs (replaces the current set).
    pub allowed_ips: Vec<IpNet>,
    /// Pre-shared key, or none.
    pub preshared_key: Option<PresharedKey>,
    /// Endpoint to set; `None` keeps the current (possibly roamed) one.
    pub endpoint: Option<SocketAddr>,
    /// Persistent keepalive in seconds (0 = off).
    pub persistent_keepalive: u16,
}

impl From<&PeerConfig> for PeerUpdate {
    fn from(c: &PeerConfig) -> Self {
        PeerUpdate {
            public_key: c.public_key,
            remove: false,
            update_only: false,
            preshared_key: Some(c.preshared_key.unwrap_or(PresharedKey([0; 32]))),
            endpoint: c.endpoint,
            persistent_keepalive: Some(c.persistent_keepalive),
            replace_allowed_ips: true,
            allowed_ips: c.allowed_ips.clone(),
        }
    }
}

/// What a device reports about one peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerState {
    /// The peer's identity.
    pub public_key: PublicKey,
    /// Pre-shared key, if any (UAPI `get` reports it; never log it).
    pub preshared_key: Option<PresharedKey>,
    /// Current endpoint (configured or roamed); `None` when unknown or on a custom path.
    pub endpoint: Option<SocketAddr>,
    /// Wall-clock time of the last completed handshake.
    pub last_handshake: Option<SystemTime>,
    /// Bytes received from the peer (WireGuard datagrams).
    pub rx_bytes: u64,
    /// Bytes sent to the peer (WireGuard datagrams).
    pub tx_bytes: u64,
    /// Persistent keepalive in seconds (0 = off).
    pub persistent_keepalive: u16,
    /// Allowed IPs.
    pub allowed_ips: Vec<IpNet>,
}

/// What a device reports about itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceState {
    /// The private key, if set (UAPI `get` reports it; never log it).
    pub private_key: Option<PrivateKeyBytes>,
    /// Actual UDP listen port (0 when not listening).
    pub listen_port: u16,
    /// Firewall mark (0 = none).
    pub fwmark: u32,
    /// Peers in a stable order (by public key).
    pub peers: Vec<PeerState>,
}

/// A WireGuard interface, userspace or kernel.
pub trait WgDevice: Send + Sync {
    /// Interface name.
    fn name(&self) -> &str;
    /// Which implementation this is.
    fn kind(&self) -> DeviceKind;
    /// Applies a change with WireGuard "set" semantics.
    fn apply(&self, update: &DeviceUpdate) -> Result<(), WgError>;
    /// Reads the current configuration and per-peer statistics.
    fn state(&self) -> Result<DeviceState, WgError>;
    /// Stops the device and removes the interface. Idempotent.
    fn close(&self) -> Result<(), WgError>;

    /// Sets the private key, listen port and firewall mark (each `None` = unchanged).
    fn configure(
        &self,
        private_key: Option<&PrivateKey>,
        listen_port: Option<u16>,
        fwmark: Option<u32>,
    ) -> Result<(), WgError> {
        self.apply(&DeviceUpdate {
            private_key: private_key.map(|k| PrivateKeyBytes(*k.as_bytes())),
            listen_port,
            fwmark,
            ..Default::default()
        })
    }

    /// Adds a peer or replaces its configuration (allowed IPs replaced, PSK and keepalive set).
    fn upsert_peer(&self, peer: &PeerConfig) -> Result<(), WgError> {
        self.apply(&DeviceUpdate {
            peers: vec![PeerUpdate::from(peer)],
            ..Default::default()
        })
    }

    /// Removes a peer (no error if absent).
    fn remove_peer(&self, key: &PublicKey) -> Result<(), WgError> {
        let mut u = PeerUpdate::new(*key);
        u.remove = true;
        self.apply(&DeviceUpdate {
            peers: vec![u],
            ..Default::default()
        })
    }

    /// Per-peer statistics for `status`.
    fn peer_stats(&self) -> Result<Vec<PeerState>, WgError> {
        Ok(self.state()?.peers)
    }
}

/// How to pick the implementation in [`create_device`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelChoice {
    /// Kernel if the `wireguard` link type works, else userspace.
    Auto,
    /// Userspace only (`NB_WG_KERNEL_DISABLED=true`).
    Disabled,
    /// Kernel or fail (`NB_WG_FORCE_KERNEL=true`).
    Forced,
}

impl KernelChoice {
    /// Reads `NB_WG_KERNEL_DISABLED` / `NB_WG_FORCE_KERNEL` from the environment.
    pub fn from_env() -> Self {
        Self::from_values(
            std::env::var("NB_WG_KERNEL_DISABLED").ok().as_deref(),
            std::env::var("NB_WG_FORCE_KERNEL").ok().as_deref(),
        )
    }

    /// Pure core of [`KernelChoice::from_env`]: disabled wins over forced.
    pub fn from_values(disabled: Option<&str>, forced: Option<&str>) -> Self {
        let truthy = |v: Option<&str>| {
            matches!(
                v.map(|s| s.trim().to_ascii_lowercase()).as_deref(),
                Some("true" | "1" | "yes")
            )
        };
        if truthy(disabled) {
            KernelChoice::Disabled
        } else if truthy(forced) {
            KernelChoice::Forced
        } else {
            KernelChoice::Auto
        }
    }
}

/// A created device: the trait object plus, for userspace, the handle the connectivity layer
/// uses for paths and the shared socket.
pub enum CreatedDevice {
    /// Userspace device (paths and non-WireGuard datagrams available).
    Userspace(Arc<userspace::UserspaceDevice>),
    /// Kernel device.
    Kernel(Arc<kernel::KernelDevice>),
}

impl CreatedDevice {
    /// The device as a trait object.
    pub fn device(&self) -> Arc<dyn WgDevice> {
        match self {
            CreatedDevice::Userspace(d) => d.clone(),
            CreatedDevice::Kernel(d) => d.clone(),
        }
    }
}

/// Creates interface `name`: kernel WireGuard when `choice` allows and the host supports it,
/// otherwise the userspace device.
pub fn create_device(
    name: &str,
    choice: KernelChoice,
    opts: userspace::Options,
) -> Result<CreatedDevice, WgError> {
    if choice != KernelChoice::Disabled {
        match kernel::KernelDevice::create(name) {
            Ok(d) => return Ok(CreatedDevice::Kernel(Arc::new(d))),
            Err(e) if choice == KernelChoice::Forced => return Err(e),
            Err(e) => tracing::info!("kernel WireGuard not used ({e}); using userspace"),
        }
    }
    let dev = userspace::UserspaceDevice::create(name, opts)?;
    Ok(CreatedDevice::Userspace(dev))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_choice_from_env_values() {
        assert_eq!(KernelChoice::from_values(None, None), KernelChoice::Auto);
        assert_eq!(
            KernelChoice::from_values(Some("true"), Some("true")),
            KernelChoice::Disabled
        );
        assert_eq!(
            KernelChoice::from_values(Some("false"), Some("TRUE")),
            KernelChoice::Forced
        );
        assert_eq!(
            KernelChoice::from_values(Some("no"), None),
            KernelChoice::Auto
        );
    }

    #[test]
    fn secrets_are_redacted_in_debug() {
        let u = DeviceUpdate {
            private_key: Some(PrivateKeyBytes([7; 32])),
            ..Default::default()
        };
        assert!(!format!("{u:?}").contains("7, 7"));
        assert_eq!(
            format!("{:?}", PresharedKey([9; 32])),
            "PresharedKey(<redacted>)"
        );
    }

    #[test]
    fn peer_config_becomes_replacing_update() {
        let key = PrivateKey::generate().public_key();
        let cfg = PeerConfig {
            public_key: key,
            allowed_ips: vec!["100.64.0.2/32".parse().unwrap()],
            preshared_key: None,
            endpoint: None,
            persistent_keepalive: 25,
        };
        let u = PeerUpdate::from(&cfg);
        assert!(u.replace_allowed_ips);
        assert_eq!(u.preshared_key, Some(PresharedKey([0; 32])));
        assert_eq!(u.persistent_keepalive, Some(25));
        assert_eq!(u.endpoint, None);
    }
}
