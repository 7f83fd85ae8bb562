//! The revocation list, `<ca-dir>/revoked.json`, written by `tether-certs revoke` and
//! watched by the relay (which refuses revoked identities at the next handshake and
//! closes their live tunnels).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use tether_proto::enroll::Revocations;
use tether_proto::Id;

use crate::files::{write_atomic, Secrecy};

pub fn revocations_path(ca_dir: &Path) -> PathBuf {
    ca_dir.join("revoked.json")
}

/// Reads a revocation list; a missing file is an empty list.
pub fn load(path: &Path) -> Result<Revocations> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .with_context(|| format!("{} is not a valid revocation list", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Revocations::default()),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

fn save(path: &Path, list: &Revocations) -> Result<()> {
    write_atomic(path, &serde_json::to_vec_pretty(list)?, Secrecy::Public)
}

/// Normalises a serial to lower-case colon-separated hex, as `inspect` prints it.
pub fn normalize_serial(serial: &str) -> Result<String> {
    let hex: String = serial
        .chars()
        .filter(|c| *c != ':')
        .collect::<String>()
        .to_ascii_lowercase();
    if hex.is_empty() || !hex.len().is_multiple_of(2) || !hex.chars().all(|c| c.is_ascii_hexdigit())
    {
        bail!("serial {serial:?} is not hex (e.g. 69:17:68:f3 as `tether-certs inspect` shows)");
    }
    Ok(hex
        .as_bytes()
        .chunks(2)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect::<Vec<_>>()
        .join(":"))
}

/// Revokes every certificate of `node`.
pub fn revoke_node(path: &Path, node: Id) -> Result<bool> {
    let mut list = load(path)?;
    if list.nodes.contains(&node) {
        return Ok(false);
    }
    list.nodes.push(node);
    save(path, &list)?;
    Ok(true)
}

/// Revokes one certificate by serial.
pub fn revoke_serial(path: &Path, serial: &str) -> Result<bool> {
    let serial = normalize_serial(serial)?;
    let mut list = load(path)?;
    if list.serials.contains(&serial) {
        return Ok(false);
    }
    list.serials.push(serial);
    save(path, &list)?;
    Ok(true)
}

/// Lifts a node's revocation (it can enroll again with a new token).
pub fn unrevoke_node(path: &Path, node: &Id) -> Result<bool> {
    let mut list = load(path)?;
    let before = list.nodes.len();
    list.nodes.retain(|n| n != node);
    if list.nodes.len() == before {
        return Ok(false);
    }
    save(path, &list)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revoke_and_lift() {
        let dir = tempfile::tempdir().unwrap();
        let path = revocations_path(dir.path());
        assert!(load(&path).unwrap().is_empty());
        let n = Id::new("n1").unwrap();
        assert!(revoke_node(&path, n.clone()).unwrap());
        assert!(!revoke_node(&path, n.clone()).unwrap());
        assert!(revoke_serial(&path, "0A:FF").unwrap());
        let list = load(&path).unwrap();
        assert!(list.is_revoked(&n, "x"));
        assert!(list.is_revoked(&Id::new("n2").unwrap(), "0a:ff"));
        assert!(unrevoke_node(&path, &n).unwrap());
        assert!(!load(&path).unwrap().is_revoked(&n, "x"));
        assert!(normalize_serial("xyz").is_err());
        assert_eq!(normalize_serial("0AFF").unwrap(), "0a:ff");
    }
}
