//! Debug bundles: a zip of status, redacted config and system state (routes, interfaces,
//! rules, nftables, sysctls, resolv.conf), optionally anonymized, with NetBird's file names.
//! Private keys, pre-shared keys, setup keys and tokens never go in.

pub mod anonymize;

use crate::config::Config;
use anonymize::Anonymizer;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Errors building a bundle.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// Writing the zip failed.
    #[error("writing debug bundle {path}: {source}")]
    Io {
        /// Bundle path.
        path: PathBuf,
        /// OS error.
        source: std::io::Error,
    },
    /// The zip library failed.
    #[error("building debug bundle: {0}")]
    Zip(#[from] zip::result::ZipError),
}

/// What goes into a bundle.
#[derive(Debug, Default)]
pub struct BundleInput {
    /// `status -d` text.
    pub status_text: String,
    /// Config, if any (rendered without secrets).
    pub config: Option<Config>,
    /// Include routes, interfaces, rules, nftables, sysctls.
    pub system_info: bool,
    /// Replace public addresses and MACs.
    pub anonymize: bool,
}

/// The config as shown in a bundle: no private key, no pre-shared key.
pub fn redacted_config(cfg: &Config) -> String {
    format!(
        "ManagementURL: {}\nAdminURL: {}\nPublicKey: {}\nPreSharedKey: {}\nInterfaceName: {}\nWireguardPort: {}\nMTU: {}\nHostname: {}\nDNSLabels: {}\nFlags: {:?}\n",
        cfg.management_url,
        cfg.admin_url,
        cfg.public_key(),
        if cfg.pre_shared_key.is_some() { "**********" } else { "" },
        cfg.interface_name,
        cfg.wireguard_port,
        cfg.mtu.map(|m| m.to_string()).unwrap_or_else(|| "default".into()),
        cfg.hostname.clone().unwrap_or_default(),
        cfg.dns_labels.join(","),
        cfg.flags,
    )
}

fn command_output(program: &str, args: &[&str]) -> String {
    match Command::new(program).args(args).output() {
        Ok(o) => {
            let mut s = String::from_utf8_lossy(&o.stdout).into_owned();
            if !o.status.success() {
                s.push_str(&format!(
                    "\n[{program} exited with {}: {}]\n",
                    o.status,
                    String::from_utf8_lossy(&o.stderr).trim()
                ));
            }
            s
        }
        Err(e) => format!("[{program} not available: {e}]\n"),
    }
}

/// Writes the bundle zip into `dir` and returns its path.
pub fn write_bundle(dir: &Path, input: &BundleInput) -> Result<PathBuf, BundleError> {
    let name = format!("netbird.debug.{}.zip", uuid::Uuid::new_v4().simple());
    let path = dir.join(name);
    let io = |source| BundleError::Io {
        path: path.clone(),
        source,
    };
    let file = std::fs::File::create(&path).map_err(io)?;
    let mut zip = zip::ZipWriter::new(file);
    let opts = zip::write::SimpleFileOptions::default().unix_permissions(0o600);
    let mut anon = Anonymizer::default();
    let mut files: Vec<(&str, String)> = vec![
        (
            "README.txt",
            format!(
                "netbird-agent debug bundle. Anonymized: {}\nAgent version {}, protocol of NetBird {}.\n",
                input.anonymize,
                crate::AGENT_VERSION,
                crate::UPSTREAM_COMPAT_VERSION
            ),
        ),
        ("status.txt", input.status_text.clone()),
    ];
    if let Some(cfg) = &input.config {
        files.push(("config.txt", redacted_config(cfg)));
    }
    if input.system_info {
        files.push((
            "routes.txt",
            command_output("ip", &["route", "show", "table", "all"]),
        ));
        files.push(("interfaces.txt", command_output("ip", &["addr", "show"])));
        files.push(("ip_rules.txt", command_output("ip", &["rule", "show"])));
        files.push((
            "nftables.txt",
            command_output("nft", &["-a", "list", "ruleset"]),
        ));
        files.push((
            "sysctls.txt",
            command_output(
                "sysctl",
                &[
                    "net.ipv4.ip_forward",
                    "net.ipv4.conf.all.src_valid_mark",
                    "net.ipv4.conf.all.rp_filter",
                ],
            ),
        ));
        files.push((
            "resolv.conf",
            std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default(),
        ));
    }
    for (name, content) in files {
        let content = if input.anonymize && name != "README.txt" {
            anon.text(&content)
        } else {
            content
        };
        zip.start_file(name, opts)?;
        zip.write_all(content.as_bytes()).map_err(io)?;
    }
    zip.finish()?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn bundle_has_netbird_names_and_no_secrets() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = Config::new_default();
        cfg.pre_shared_key = Some("cHNrcHNrcHNrcHNrcHNrcHNrcHNrcHNrcHNrcHNrMTI=".into());
        let path = write_bundle(
            dir.path(),
            &BundleInput {
                status_text: "Management: Connected to https://203.0.113.9:443".into(),
                config: Some(cfg.clone()),
                system_info: true,
                anonymize: true,
            },
        )
        .unwrap();
        let mut z = zip::ZipArchive::new(std::fs::File::open(&path).unwrap()).unwrap();
        let names: Vec<String> = z.file_names().map(String::from).collect();
        for want in [
            "README.txt",
            "status.txt",
            "config.txt",
            "routes.txt",
            "interfaces.txt",
            "nftables.txt",
            "resolv.conf",
        ] {
            assert!(
                names.iter().any(|n| n == want),
                "{want} missing from {names:?}"
            );
        }
        let mut all = String::new();
        for i in 0..z.len() {
            z.by_index(i).unwrap().read_to_string(&mut all).unwrap();
        }
        assert!(!all.contains(&cfg.private_key.to_base64()));
        assert!(!all.contains("cHNrcHNr"));
        assert!(!all.contains("203.0.113.9"));
        assert!(all.contains(&cfg.public_key().to_base64()));
    }
}
