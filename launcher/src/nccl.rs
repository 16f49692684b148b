//! Finding NCCL for tensor-parallel shards. The shards open it at run time through cudarc, which
//! asks for `libnccl.so` (and CUDA-versioned names), never `libnccl.so.2`, while runtime-only
//! installs (Debian's `libnccl2`, PyTorch's `nvidia-nccl-cu*` wheels) ship only `libnccl.so.2`.
//! So where no `libnccl.so` is on the library path but a `libnccl.so.2` is found, the launcher
//! links it under the name cudarc wants in its cache and puts that directory first on the
//! shards' `LD_LIBRARY_PATH` (the dynamic loader reads that variable only at process start,
//! so it has to be set by the parent).

use std::path::{Path, PathBuf};
use std::process::Command;

/// Directories the dynamic loader searches without being told (Debian/Ubuntu multiarch, RPM
/// distributions, the CUDA toolkit's default location).
const SYSTEM_DIRS: &[&str] = &[
    "/usr/lib/x86_64-linux-gnu",
    "/usr/lib/aarch64-linux-gnu",
    "/usr/lib64",
    "/usr/lib",
    "/usr/local/lib",
    "/usr/local/cuda/lib64",
];

/// The `LD_LIBRARY_PATH` the shards need for NCCL, or `None` when they need nothing (a
/// `libnccl.so` is already reachable) or nothing was found (the shard then says how to install
/// NCCL when it starts).
pub fn shard_library_path(cache_dir: &Path) -> Option<String> {
    let current = std::env::var("LD_LIBRARY_PATH").unwrap_or_default();
    let mut dirs: Vec<PathBuf> = std::env::split_paths(&current).collect();
    dirs.extend(SYSTEM_DIRS.iter().map(PathBuf::from));
    // A reachable libnccl.so needs nothing; only then is Python asked where its wheel is.
    if dirs.iter().any(|d| d.join("libnccl.so").exists()) {
        return None;
    }
    dirs.extend(pytorch_nccl_dir());
    let link_dir = cache_dir.join("nccl");
    match link_nccl(&dirs, &link_dir) {
        Ok(Some(lib_dir)) => {
            tracing::info!(
                nccl = %lib_dir.display(),
                link = %link_dir.join("libnccl.so").display(),
                "NCCL found as libnccl.so.2; linked as libnccl.so for the shards"
            );
            let mut path = vec![link_dir, lib_dir];
            path.extend(std::env::split_paths(&current));
            std::env::join_paths(path)
                .ok()
                .map(|p| p.to_string_lossy().into_owned())
        }
        Ok(None) => None,
        Err(e) => {
            tracing::warn!(error = %e, dir = %link_dir.display(), "cannot link libnccl.so");
            None
        }
    }
}

/// Where a `libnccl.so.2` without a `libnccl.so` beside it (in any of `dirs`) is first found,
/// links `link_dir/libnccl.so` to it and returns its directory. `None`: some directory already
/// has `libnccl.so`, or none has NCCL.
pub fn link_nccl(dirs: &[PathBuf], link_dir: &Path) -> std::io::Result<Option<PathBuf>> {
    if dirs.iter().any(|d| d.join("libnccl.so").exists()) {
        return Ok(None);
    }
    let Some(lib) = dirs
        .iter()
        .map(|d| d.join("libnccl.so.2"))
        .find(|p| p.exists())
    else {
        return Ok(None);
    };
    let lib = lib.canonicalize()?;
    std::fs::create_dir_all(link_dir)?;
    replace_symlink(&lib, &link_dir.join("libnccl.so"))?;
    Ok(lib.parent().map(Path::to_path_buf))
}

/// Points `link` at `target`, replacing whatever link an earlier run left (it may point at
/// another install). The cache may be a volume shared by several launchers (pods of one
/// node), so this must never leave `link` missing, not even for an instant: the link is made
/// under a unique name beside it, then renamed over it (rename(2) is atomic within one
/// directory). Removing and recreating it let a second launcher find no link (its shards then
/// failed to open NCCL) or fail itself with "File exists".
fn replace_symlink(target: &Path, link: &Path) -> std::io::Result<()> {
    // Unique across processes and containers (each may be pid 1 on a shared volume).
    let tmp = link.with_file_name(format!(
        ".libnccl.so.{}.{:016x}.tmp",
        std::process::id(),
        rand::random::<u64>()
    ));
    std::os::unix::fs::symlink(target, &tmp)?;
    std::fs::rename(&tmp, link).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

/// `nvidia/nccl/lib` of the `python3` on PATH, where PyTorch's wheels put NCCL.
fn pytorch_nccl_dir() -> Option<PathBuf> {
    let out = Command::new("python3")
        .args(["-c", "import nvidia.nccl as n; print(list(n.__path__)[0])"])
        .output()
        .ok()?;
    let dir = String::from_utf8(out.stdout).ok()?;
    let dir = dir.trim();
    (out.status.success() && !dir.is_empty()).then(|| PathBuf::from(dir).join("lib"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(tag: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("pagedserve-nccl-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        dir
    }

    #[test]
    fn links_a_runtime_only_nccl_under_the_name_cudarc_opens() {
        let root = temp("link");
        let (empty, wheel, links) = (root.join("empty"), root.join("wheel"), root.join("links"));
        std::fs::create_dir_all(&empty).expect("dir");
        std::fs::create_dir_all(&wheel).expect("dir");
        std::fs::write(wheel.join("libnccl.so.2"), b"ELF").expect("lib");
        let dirs = [empty.clone(), wheel.clone()];
        let found = link_nccl(&dirs, &links).expect("link");
        assert_eq!(found, Some(wheel.canonicalize().expect("canon")));
        let target = std::fs::read_link(links.join("libnccl.so")).expect("symlink");
        assert_eq!(
            target,
            wheel.join("libnccl.so.2").canonicalize().expect("canon")
        );
        // Again (a restart): the old link is replaced, not an error.
        assert!(link_nccl(&dirs, &links).expect("relink").is_some());
        let _ = std::fs::remove_dir_all(&root);
    }

    /// Launchers sharing a cache relink at the same time: every call succeeds and the link is
    /// never missing. With remove-then-create, one saw no link or failed with EEXIST.
    #[test]
    fn concurrent_relinks_never_leave_the_link_missing() {
        let root = temp("race");
        let (wheel, links) = (root.join("wheel"), root.join("links"));
        std::fs::create_dir_all(&wheel).expect("dir");
        std::fs::write(wheel.join("libnccl.so.2"), b"ELF").expect("lib");
        let dirs = [wheel];
        link_nccl(&dirs, &links).expect("first link");
        let link = links.join("libnccl.so");
        let done = std::sync::atomic::AtomicBool::new(false);
        let (missing, failures) = std::thread::scope(|s| {
            let relinkers: Vec<_> = (0..3)
                .map(|_| {
                    s.spawn(|| {
                        (0..2000)
                            .filter(|_| link_nccl(&dirs, &links).is_err())
                            .count()
                    })
                })
                .collect();
            let watcher = s.spawn(|| {
                let mut missing = 0;
                while !done.load(std::sync::atomic::Ordering::Relaxed) {
                    missing += usize::from(link.symlink_metadata().is_err());
                }
                missing
            });
            let failures: usize = relinkers
                .into_iter()
                .map(|h| h.join().expect("relinker"))
                .sum();
            done.store(true, std::sync::atomic::Ordering::Relaxed);
            (watcher.join().expect("watcher"), failures)
        });
        assert_eq!(
            (missing, failures),
            (0, 0),
            "(times missing, failed relinks)"
        );
        let leftovers: Vec<_> = std::fs::read_dir(&links)
            .expect("links")
            .flatten()
            .map(|e| e.file_name())
            .filter(|n| n != "libnccl.so")
            .collect();
        assert!(leftovers.is_empty(), "temporary links left: {leftovers:?}");
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn nothing_to_do_with_a_dev_install_or_without_nccl() {
        let root = temp("none");
        let dev = root.join("dev");
        std::fs::create_dir_all(&dev).expect("dir");
        let links = root.join("links");
        assert_eq!(
            link_nccl(std::slice::from_ref(&dev), &links).expect("no nccl"),
            None
        );
        std::fs::write(dev.join("libnccl.so.2"), b"ELF").expect("lib");
        std::fs::write(dev.join("libnccl.so"), b"ELF").expect("lib");
        assert_eq!(link_nccl(&[dev], &links).expect("dev install"), None);
        assert!(!links.join("libnccl.so").exists());
        let _ = std::fs::remove_dir_all(&root);
    }
}
