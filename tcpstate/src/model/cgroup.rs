//! What a cgroup v2 path says about the process that owned a socket: the
//! container (and its runtime) or systemd unit it ran in, and its
//! Kubernetes pod. Pure string rules over the layouts the common runtimes
//! use; resolving a cgroup id to its path is `source::cgroup`'s job.

use std::sync::Arc;

use serde::Serialize;

/// Who runs the workload a cgroup holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Runtime {
    Docker,
    Containerd,
    Crio,
    Podman,
    /// A systemd service (`.service`) or scope outside any container.
    Systemd,
}

impl Runtime {
    pub fn name(self) -> &'static str {
        match self {
            Self::Docker => "docker",
            Self::Containerd => "containerd",
            Self::Crio => "crio",
            Self::Podman => "podman",
            Self::Systemd => "systemd",
        }
    }
}

/// The workload a cgroup path names.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct Container {
    /// The container id (64 hex digits for the runtimes here), or the
    /// systemd unit's name.
    pub id: String,
    pub runtime: Runtime,
    /// The Kubernetes pod's UID, when the path is under `kubepods`.
    pub pod_uid: Option<String>,
}

impl Container {
    /// The label a metric or table shows: the first 12 digits of a
    /// container id (as `docker ps` does), or the unit's name.
    pub fn short(&self) -> &str {
        match self.runtime {
            Runtime::Systemd => &self.id,
            _ => &self.id[..self.id.len().min(12)],
        }
    }
}

/// A socket owner's cgroup, resolved: its path under the cgroup2 mount, and
/// the workload that path names, if any.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct Cgroup {
    pub path: String,
    pub container: Option<Container>,
    /// What tables and metrics group by: the container (short id or unit
    /// name), else the path. Shared, as aggregate keys clone it.
    #[serde(skip)]
    pub label: Arc<str>,
}

impl Cgroup {
    pub fn of_path(path: &str) -> Arc<Self> {
        let container = container_of(path);
        let label = container.as_ref().map_or(path, Container::short).into();
        Arc::new(Self { path: path.to_string(), container, label })
    }
}

fn is_container_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A container id after one of the systemd scope prefixes, as in
/// `docker-<id>.scope`, `cri-containerd-<id>.scope`, `crio-<id>.scope`,
/// `libpod-<id>.scope`.
fn scoped(segment: &str) -> Option<(Runtime, &str)> {
    let body = segment.strip_suffix(".scope").unwrap_or(segment);
    [
        ("docker-", Runtime::Docker),
        ("cri-containerd-", Runtime::Containerd),
        ("crio-", Runtime::Crio),
        ("libpod-", Runtime::Podman),
    ]
    .into_iter()
    .find_map(|(prefix, runtime)| {
        body.strip_prefix(prefix).filter(|id| is_container_id(id)).map(|id| (runtime, id))
    })
}

/// The pod UID in a `kubepods` segment: `pod<uid>` (cgroupfs driver) or
/// `kubepods-burstable-pod<uid with _>.slice` (systemd driver).
fn pod_uid(segment: &str) -> Option<String> {
    let body = segment.strip_suffix(".slice").unwrap_or(segment);
    let uid = body.rsplit_once("pod").map(|(_, uid)| uid)?;
    let uid = uid.replace('_', "-");
    (uid.len() == 36 && uid.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-')).then_some(uid)
}

/// The workload a cgroup path names: the innermost container, with the pod
/// around it; else the innermost systemd service.
pub fn container_of(path: &str) -> Option<Container> {
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let in_kubepods = segments.iter().any(|s| s.starts_with("kubepods"));
    let pod = if in_kubepods { segments.iter().rev().find_map(|s| pod_uid(s)) } else { None };
    for (i, segment) in segments.iter().enumerate().rev() {
        if let Some((runtime, id)) = scoped(segment) {
            return Some(Container { id: id.to_string(), runtime, pod_uid: pod });
        }
        // cgroupfs layouts name the bare id under the runtime's directory:
        // /docker/<id>, /kubepods/burstable/pod<uid>/<id>.
        if is_container_id(segment) {
            let runtime = match i.checked_sub(1).map(|p| segments[p]) {
                Some("docker") => Runtime::Docker,
                Some("libpod_parent") | Some("machine.slice") => Runtime::Podman,
                _ => Runtime::Containerd,
            };
            return Some(Container { id: segment.to_string(), runtime, pod_uid: pod });
        }
    }
    let service = segments.iter().rev().find(|s| s.ends_with(".service"))?;
    Some(Container { id: service.to_string(), runtime: Runtime::Systemd, pod_uid: None })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "3f9e1c2a7b8d4e5f60718293a4b5c6d7e8f9011223344556677889900abbccdd";

    fn of(path: &str) -> Option<(Runtime, String, Option<String>)> {
        container_of(path).map(|c| (c.runtime, c.id, c.pod_uid))
    }

    #[test]
    fn docker_under_systemd_and_cgroupfs() {
        assert_eq!(of(&format!("/system.slice/docker-{ID}.scope")), Some((Runtime::Docker, ID.into(), None)));
        assert_eq!(of(&format!("/docker/{ID}")), Some((Runtime::Docker, ID.into(), None)));
    }

    #[test]
    fn kubernetes_runtimes_and_pods() {
        let uid = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0";
        let systemd_uid = uid.replace('-', "_");
        let containerd = format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{systemd_uid}.slice/cri-containerd-{ID}.scope"
        );
        assert_eq!(of(&containerd), Some((Runtime::Containerd, ID.into(), Some(uid.into()))));
        let crio = format!(
            "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{systemd_uid}.slice/crio-{ID}.scope"
        );
        assert_eq!(of(&crio), Some((Runtime::Crio, ID.into(), Some(uid.into()))));
        let cgroupfs = format!("/kubepods/burstable/pod{uid}/{ID}");
        assert_eq!(of(&cgroupfs), Some((Runtime::Containerd, ID.into(), Some(uid.into()))));
    }

    #[test]
    fn podman_and_systemd() {
        assert_eq!(
            of(&format!(
                "/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{ID}.scope/container"
            )),
            Some((Runtime::Podman, ID.into(), None))
        );
        assert_eq!(of("/system.slice/nginx.service"), Some((Runtime::Systemd, "nginx.service".into(), None)));
        assert_eq!(of("/user.slice/user-1000.slice/session-3.scope"), None);
        assert_eq!(of("/"), None);
        // Not an id: too short, or not hex.
        assert_eq!(of("/system.slice/docker-abc.scope"), None);
    }

    #[test]
    fn labels() {
        let c = Cgroup::of_path(&format!("/system.slice/docker-{ID}.scope"));
        assert_eq!(&*c.label, &ID[..12]);
        assert_eq!(&*Cgroup::of_path("/user.slice/session-3.scope").label, "/user.slice/session-3.scope");
        assert_eq!(&*Cgroup::of_path("/system.slice/nginx.service").label, "nginx.service");
    }
}
