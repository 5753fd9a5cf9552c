//! Kernel WireGuard over generic netlink.

use super::{DeviceKind, DeviceState, DeviceUpdate, WgDevice, WgError};

/// A kernel WireGuard interface.
pub struct KernelDevice {
    name: String,
}

impl KernelDevice {
    /// Creates the `wireguard` link `name`.
    pub fn create(name: &str) -> Result<Self, WgError> {
        let _ = name;
        Err(WgError::KernelUnavailable("not implemented".into()))
    }
}

impl WgDevice for KernelDevice {
    fn name(&self) -> &str {
        &self.name
    }
    fn kind(&self) -> DeviceKind {
        DeviceKind::Kernel
    }
    fn apply(&self, _u: &DeviceUpdate) -> Result<(), WgError> {
        Err(WgError::Closed)
    }
    fn state(&self) -> Result<DeviceState, WgError> {
        Err(WgError::Closed)
    }
    fn close(&self) -> Result<(), WgError> {
        Ok(())
    }
}
