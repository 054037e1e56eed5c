//! Cgroup v2 ids, as the kernel program captures them with a socket's
//! owner, to paths: a cgroup's id is its directory's inode number under
//! the cgroup2 mount, which `/proc/self/mountinfo` names (`/sys/fs/cgroup`
//! on most hosts, `/sys/fs/cgroup/unified` on hybrid ones).

use std::{
    collections::HashMap,
    fs,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use crate::model::cgroup::Cgroup;

/// A scan walks the whole cgroup tree (a few ms for thousands of cgroups):
/// at most once per this interval, for ids not seen yet (a new container),
/// whatever the event rate. A transition of a cgroup made since the last
/// scan shows no cgroup until the next.
const RESCAN_EVERY: Duration = Duration::from_millis(200);
/// Ids remembered, found or not; beyond it the cache starts afresh.
const CACHE_MAX: usize = 65_536;
/// Bounds on a scan, against a pathological tree.
const SCAN_MAX_DEPTH: usize = 32;
const SCAN_MAX_DIRS: usize = 200_000;

/// The cgroup2 mount point: `/sys/fs/cgroup` on most hosts,
/// `/sys/fs/cgroup/unified` on hybrid ones.
pub fn cgroup2_root() -> Option<PathBuf> {
    super::procnet::mounts_of("cgroup2").into_iter().next()
}

/// `statfs` magic of a cgroup v2 filesystem.
const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;

/// The directory `--cgroup` names: a path below the cgroup2 mount, or an
/// absolute one on it; a usage error if it is not a cgroup v2 directory.
pub fn cgroup_dir(arg: &Path) -> Result<PathBuf, crate::UsageError> {
    let usage = |why: &str| crate::UsageError(format!("--cgroup {}: {why}", arg.display()));
    let root = cgroup2_root();
    let candidates = [Some(arg.to_path_buf()), root.map(|r| r.join(arg.strip_prefix("/").unwrap_or(arg)))];
    let dir = candidates
        .into_iter()
        .flatten()
        .find(|p| p.is_dir() && is_cgroup2(p))
        .ok_or_else(|| usage("not a cgroup v2 directory (absolute, or below the cgroup2 mount)"))?;
    Ok(dir)
}

fn is_cgroup2(path: &Path) -> bool {
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else { return false };
    // SAFETY: a zeroed statfs is valid; statfs only writes into it.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: a NUL-terminated path and a valid out pointer.
    unsafe { libc::statfs(c.as_ptr(), &mut st) == 0 && st.f_type as i64 == CGROUP2_SUPER_MAGIC }
}

pub struct CgroupResolver {
    root: Option<PathBuf>,
    cache: HashMap<u64, Option<Arc<Cgroup>>>,
    scanned: Option<Instant>,
}

impl CgroupResolver {
    pub fn new() -> Self {
        let root = cgroup2_root();
        if root.is_none() {
            log::info!("no cgroup2 mount: sockets' cgroups stay unknown");
        }
        Self::with_root(root)
    }

    pub fn with_root(root: Option<PathBuf>) -> Self {
        Self { root, cache: HashMap::new(), scanned: None }
    }

    /// The cgroup with id `id`; `None` for 0 (not captured) or an id no
    /// longer in the tree.
    pub fn resolve(&mut self, id: u64) -> Option<Arc<Cgroup>> {
        if id == 0 {
            return None;
        }
        if let Some(known) = self.cache.get(&id) {
            return known.clone();
        }
        let due = self.scanned.is_none_or(|at| at.elapsed() >= RESCAN_EVERY);
        if !due {
            return None;
        }
        self.scan();
        let found = self.cache.get(&id).cloned().flatten();
        self.cache.entry(id).or_insert(None);
        found
    }

    /// Walks the tree, adding every cgroup's id and path.
    fn scan(&mut self) {
        self.scanned = Some(Instant::now());
        let Some(root) = self.root.clone() else { return };
        if self.cache.len() > CACHE_MAX {
            self.cache.clear();
        }
        let mut stack = vec![(root.clone(), 0usize)];
        let mut dirs = 0;
        while let Some((dir, depth)) = stack.pop() {
            dirs += 1;
            if dirs > SCAN_MAX_DIRS {
                break;
            }
            let Ok(meta) = fs::metadata(&dir) else { continue };
            let path = dir.strip_prefix(&root).map_or_else(|_| "/".into(), |p| format!("/{}", p.display()));
            self.cache.entry(meta.ino()).or_insert_with(|| Some(Cgroup::of_path(&path)));
            if depth >= SCAN_MAX_DEPTH {
                continue;
            }
            let Ok(entries) = fs::read_dir(&dir) else { continue };
            for entry in entries.flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    stack.push((entry.path(), depth + 1));
                }
            }
        }
    }

    /// The id of the cgroup at `path` (absolute, or relative to the mount).
    pub fn id_of(&self, path: &Path) -> Option<u64> {
        let full = if path.is_absolute() && self.root.as_ref().is_some_and(|r| path.starts_with(r)) {
            path.to_path_buf()
        } else {
            self.root.as_ref()?.join(path.strip_prefix("/").unwrap_or(path))
        };
        fs::metadata(full).ok().map(|m| m.ino())
    }
}

impl Default for CgroupResolver {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_our_own_cgroup() {
        let mut resolver = CgroupResolver::new();
        let Some(root) = resolver.root.clone() else { return };
        // Our own cgroup: /proc/self/cgroup's "0::" line names it.
        let own = fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
        let Some(path) = own.lines().find_map(|l| l.strip_prefix("0::")) else { return };
        let id = fs::metadata(root.join(path.trim_start_matches('/'))).unwrap().ino();
        assert_eq!(resolver.id_of(Path::new(path)), Some(id));
        assert_eq!(resolver.resolve(id).map(|c| c.path.clone()), Some(path.to_string()));
        assert_eq!(resolver.resolve(0), None);
    }
}
