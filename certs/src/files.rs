//! Writing PEM files safely: atomically (temp file + rename) and, for keys, mode 0600
//! from the first byte, so a crash never leaves a half-written or world-readable key.

use std::io::Write;
use std::path::Path;

use anyhow::{bail, Context, Result};

/// Whether an existing file may be replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overwrite {
    Refuse,
    Allow,
}

/// File permissions for what is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Secrecy {
    /// Certificates: 0644.
    Public,
    /// Private keys: 0600.
    Secret,
}

/// Fails if any of `paths` exists and overwriting is refused; checked before anything is
/// written so that a refusal leaves every file as it was.
pub fn check_absent(paths: &[&Path], overwrite: Overwrite) -> Result<()> {
    if overwrite == Overwrite::Allow {
        return Ok(());
    }
    for p in paths {
        if p.exists() {
            bail!("{} already exists; pass --force to replace it", p.display());
        }
    }
    Ok(())
}

/// Writes `contents` to `path` atomically with the given permissions.
pub fn write_atomic(path: &Path, contents: &[u8], secrecy: Secrecy) -> Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let name = path.file_name().context("output path has no file name")?;
    let tmp = dir.join(format!(
        ".{}.tmp{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(match secrecy {
            Secrecy::Public => 0o644,
            Secrecy::Secret => 0o600,
        });
    }
    let result = (|| -> Result<()> {
        let mut f = opts
            .open(&tmp)
            .with_context(|| format!("creating {}", tmp.display()))?;
        f.write_all(contents)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
            .with_context(|| format!("moving {} into place", path.display()))?;
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_files_are_private_and_refusal_keeps_old_content() {
        let dir = std::env::temp_dir().join(format!("tether-files-{}", std::process::id()));
        let key = dir.join("k.key");
        write_atomic(&key, b"one", Secrecy::Secret).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&key).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert!(check_absent(&[&key], Overwrite::Refuse).is_err());
        assert!(check_absent(&[&key], Overwrite::Allow).is_ok());
        assert_eq!(std::fs::read(&key).unwrap(), b"one");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
