//! `scoutfs install`: put this binary where it runs from and make the
//! mount(8) helper links to it, so that `mount -t scoutfs` and fstab
//! lines work: `SBINDIR/scoutfs` (default /usr/local/sbin) and
//! `/sbin/mount.scoutfs`, `/sbin/mount.fuse.scoutfs` (mount(8) looks for
//! helpers in /sbin only). `--root DIR` installs under DIR instead of /
//! (a package's staging root, or a test's); `--uninstall` removes what
//! install made.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::helper::MOUNT_HELPERS;

/// Where mount(8) looks for `mount.TYPE` helpers.
const HELPER_DIR: &str = "/sbin";

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Install under this directory instead of / (paths inside it, and
    /// the links' targets, are as the installed system sees them).
    #[arg(long, default_value = "/")]
    pub root: PathBuf,
    /// Where the binary goes.
    #[arg(long, default_value = "/usr/local/sbin")]
    pub sbindir: PathBuf,
    /// Remove the binary and the helper links instead.
    #[arg(long)]
    pub uninstall: bool,
}

/// `path` (absolute, as the installed system sees it) under `root`.
fn under(root: &Path, path: &Path) -> PathBuf {
    root.join(path.strip_prefix("/").unwrap_or(path))
}

pub fn run(a: &Args) -> i32 {
    let r = if a.uninstall {
        uninstall(a)
    } else {
        install(a)
    };
    match r {
        Ok(()) => 0,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "scoutfs install: {e}");
            1
        }
    }
}

fn installed_binary(a: &Args) -> Result<PathBuf, String> {
    if !a.sbindir.is_absolute() {
        return Err(format!("--sbindir {}: not absolute", a.sbindir.display()));
    }
    Ok(a.sbindir.join("scoutfs"))
}

fn install(a: &Args) -> Result<(), String> {
    let target = installed_binary(a)?;
    let bin = under(&a.root, &target);
    let exe = std::env::current_exe().map_err(|e| format!("finding this binary: {e}"))?;
    let dir = bin.parent().unwrap_or(Path::new("/"));
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let same = match (exe.canonicalize(), bin.canonicalize()) {
        (Ok(x), Ok(y)) => x == y,
        _ => false,
    };
    if !same {
        // A copy beside it, then a rename: a running engine keeps its
        // old binary, and nobody sees half a file.
        let tmp = dir.join(format!(".scoutfs.install.{}", std::process::id()));
        std::fs::copy(&exe, &tmp)
            .and_then(|_| std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755)))
            .and_then(|_| std::fs::rename(&tmp, &bin))
            .map_err(|e| {
                let _ = std::fs::remove_file(&tmp);
                format!("copying {} to {}: {e}", exe.display(), bin.display())
            })?;
    }
    println!("installed {}", bin.display());
    let helper_dir = under(&a.root, Path::new(HELPER_DIR));
    std::fs::create_dir_all(&helper_dir).map_err(|e| format!("{}: {e}", helper_dir.display()))?;
    for name in MOUNT_HELPERS {
        let link = helper_dir.join(name);
        match std::fs::symlink_metadata(&link) {
            Ok(m) if m.file_type().is_symlink() => std::fs::remove_file(&link)
                .map_err(|e| format!("replacing {}: {e}", link.display()))?,
            Ok(_) => {
                return Err(format!(
                    "{} exists and is not a link; remove it to install the helper",
                    link.display()
                ))
            }
            Err(_) => {}
        }
        std::os::unix::fs::symlink(&target, &link)
            .map_err(|e| format!("{}: {e}", link.display()))?;
        println!("linked {} -> {}", link.display(), target.display());
    }
    Ok(())
}

fn uninstall(a: &Args) -> Result<(), String> {
    let target = installed_binary(a)?;
    let helper_dir = under(&a.root, Path::new(HELPER_DIR));
    for name in MOUNT_HELPERS {
        let link = helper_dir.join(name);
        if std::fs::read_link(&link).is_ok_and(|t| t == target) {
            std::fs::remove_file(&link).map_err(|e| format!("{}: {e}", link.display()))?;
            println!("removed {}", link.display());
        }
    }
    let bin = under(&a.root, &target);
    if std::fs::symlink_metadata(&bin).is_ok_and(|m| m.is_file()) {
        std::fs::remove_file(&bin).map_err(|e| format!("{}: {e}", bin.display()))?;
        println!("removed {}", bin.display());
    }
    Ok(())
}
