//! Finds (or mounts) tracefs and reads the tracepoint's record layout.

use std::{
    ffi::CString,
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, anyhow, bail};
use tcpstate_ebpf::RecordOffsets;

/// Where tracefs is usually mounted, in the order aya looks.
const MOUNT_POINTS: [&str; 2] = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];
pub const TRACEPOINT_CATEGORY: &str = "sock";
pub const TRACEPOINT_NAME: &str = "inet_sock_set_state";

fn is_mounted(dir: &Path) -> bool {
    dir.join("events").is_dir()
}

/// Returns the tracefs root, mounting tracefs at `/sys/kernel/tracing` if no
/// mount is found (aya needs one to attach a tracepoint).
pub fn tracefs_root() -> anyhow::Result<PathBuf> {
    if let Some(found) = MOUNT_POINTS.iter().map(Path::new).find(|d| is_mounted(d)) {
        return Ok(found.to_path_buf());
    }
    // Mounted, but not where we looked or not readable by us (tracefs is
    // often mode 0700): say which, rather than try to mount it again.
    for dir in &super::procnet::mounts_of("tracefs") {
        match fs::metadata(dir.join("events")) {
            Ok(events) if events.is_dir() => return Ok(dir.clone()),
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                use std::os::unix::fs::PermissionsExt as _;
                let mode = fs::metadata(dir).map(|m| m.permissions().mode() & 0o7777).unwrap_or(0);
                bail!(
                    "tracefs is mounted at {} but this user cannot read it (mode {mode:04o}): run as root, or make it readable (`chmod 0755 {}`)",
                    dir.display(),
                    dir.display()
                );
            }
            _ => {}
        }
    }
    let target = MOUNT_POINTS[0];
    let c = |s: &str| CString::new(s).expect("no NUL in constant");
    let (source, dir, fstype) = (c("nodev"), c(target), c("tracefs"));
    // SAFETY: valid NUL-terminated strings, no data argument.
    let rc = unsafe { libc::mount(source.as_ptr(), dir.as_ptr(), fstype.as_ptr(), 0, std::ptr::null()) };
    if rc != 0 {
        let err = std::io::Error::last_os_error();
        bail!("tracefs is not mounted and mounting it failed ({err}); run `mount -t tracefs nodev {target}`");
    }
    if !is_mounted(Path::new(target)) {
        bail!("mounted tracefs at {target} but it has no events directory");
    }
    log::info!("mounted tracefs at {target}");
    Ok(PathBuf::from(target))
}

/// Reads the record layout of `sock:inet_sock_set_state` from its format file.
pub fn read_offsets(tracefs: &Path) -> anyhow::Result<RecordOffsets> {
    let path = tracefs.join("events").join(TRACEPOINT_CATEGORY).join(TRACEPOINT_NAME).join("format");
    let text = match fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
            "this kernel has no {TRACEPOINT_CATEGORY}:{TRACEPOINT_NAME} tracepoint (it needs Linux 4.16 or later)"
        ),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    parse_format(&text).with_context(|| format!("unexpected layout in {}", path.display()))
}

/// One `field:TYPE NAME; offset:N; size:N; signed:N;` line (tab-separated).
#[derive(Debug, PartialEq, Eq)]
struct Field<'a> {
    name: &'a str,
    offset: u16,
    size: u16,
}

fn parse_field(line: &str) -> Option<Field<'_>> {
    let mut parts = line.trim().split(';').map(str::trim);
    let decl = parts.next()?.strip_prefix("field:")?;
    // "__u8 saddr_v6[16]" → "saddr_v6"
    let name = decl.rsplit(' ').next()?.split('[').next()?;
    let mut offset = None;
    let mut size = None;
    for part in parts {
        if let Some(v) = part.strip_prefix("offset:") {
            offset = v.parse().ok();
        } else if let Some(v) = part.strip_prefix("size:") {
            size = v.parse().ok();
        }
    }
    Some(Field { name, offset: offset?, size: size? })
}

pub fn parse_format(text: &str) -> anyhow::Result<RecordOffsets> {
    let fields: Vec<Field<'_>> = text.lines().filter_map(parse_field).collect();
    let field = |name: &str, sizes: &[u16]| -> anyhow::Result<&Field<'_>> {
        let f = fields.iter().find(|f| f.name == name).ok_or_else(|| anyhow!("field {name} is missing"))?;
        if !sizes.contains(&f.size) {
            bail!("field {name} has size {}, expected {sizes:?}", f.size);
        }
        Ok(f)
    };
    let protocol = field("protocol", &[1, 2])?;
    let offsets = RecordOffsets {
        skaddr: field("skaddr", &[8])?.offset,
        oldstate: field("oldstate", &[4])?.offset,
        newstate: field("newstate", &[4])?.offset,
        sport: field("sport", &[2])?.offset,
        dport: field("dport", &[2])?.offset,
        family: field("family", &[2])?.offset,
        protocol: protocol.offset,
        saddr_v6: field("saddr_v6", &[16])?.offset,
        daddr_v6: field("daddr_v6", &[16])?.offset,
        protocol_size: protocol.size,
        record_len: 0,
    };
    let fields_end = [
        (offsets.skaddr, 8),
        (offsets.oldstate, 4),
        (offsets.newstate, 4),
        (offsets.sport, 2),
        (offsets.dport, 2),
        (offsets.family, 2),
        (offsets.protocol, offsets.protocol_size),
        (offsets.saddr_v6, 16),
        (offsets.daddr_v6, 16),
    ];
    // The program reads fields at `offset & RECORD_OFFSET_MASK` from a
    // scratch copy; offsets beyond the mask would read the wrong bytes.
    if let Some((off, _)) = fields_end.iter().find(|(off, _)| *off > tcpstate_ebpf::RECORD_OFFSET_MASK) {
        bail!("field offset {off} is beyond what the program can read");
    }
    let record_len = fields_end.iter().map(|(off, size)| off + size).max().unwrap_or(0);
    Ok(RecordOffsets { record_len, ..offsets })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Linux 6.18, as read on the development machine.
    const FORMAT_6_18: &str = "name: inet_sock_set_state
ID: 1539
format:
	field:unsigned short common_type;	offset:0;	size:2;	signed:0;
	field:unsigned char common_flags;	offset:2;	size:1;	signed:0;
	field:unsigned char common_preempt_count;	offset:3;	size:1;	signed:0;
	field:int common_pid;	offset:4;	size:4;	signed:1;

	field:const void * skaddr;	offset:8;	size:8;	signed:0;
	field:int oldstate;	offset:16;	size:4;	signed:1;
	field:int newstate;	offset:20;	size:4;	signed:1;
	field:__u16 sport;	offset:24;	size:2;	signed:0;
	field:__u16 dport;	offset:26;	size:2;	signed:0;
	field:__u16 family;	offset:28;	size:2;	signed:0;
	field:__u16 protocol;	offset:30;	size:2;	signed:0;
	field:__u8 saddr[4];	offset:32;	size:4;	signed:0;
	field:__u8 daddr[4];	offset:36;	size:4;	signed:0;
	field:__u8 saddr_v6[16];	offset:40;	size:16;	signed:0;
	field:__u8 daddr_v6[16];	offset:56;	size:16;	signed:0;

print fmt: \"family=%s protocol=%s ...\"
";

    #[test]
    fn parses_current_layout() {
        let o = parse_format(FORMAT_6_18).unwrap();
        assert_eq!(
            o,
            RecordOffsets {
                skaddr: 8,
                oldstate: 16,
                newstate: 20,
                sport: 24,
                dport: 26,
                family: 28,
                protocol: 30,
                saddr_v6: 40,
                daddr_v6: 56,
                protocol_size: 2,
                record_len: 72,
            }
        );
    }

    #[test]
    fn parses_pre_5_6_layout_with_one_byte_protocol() {
        let old = FORMAT_6_18
            .replace(
                "field:__u16 protocol;\toffset:30;\tsize:2;",
                "field:__u8 protocol;\toffset:30;\tsize:1;",
            )
            .replace("offset:32;", "offset:31;")
            .replace("offset:36;", "offset:35;")
            .replace("offset:40;", "offset:39;")
            .replace("offset:56;", "offset:55;");
        let o = parse_format(&old).unwrap();
        assert_eq!((o.protocol, o.protocol_size), (30, 1));
        assert_eq!((o.saddr_v6, o.daddr_v6), (39, 55));
        assert_eq!(o.record_len, 71);
    }

    #[test]
    fn rejects_missing_or_resized_fields() {
        let no_family = FORMAT_6_18.replace("field:__u16 family;", "field:__u16 fam;");
        assert!(parse_format(&no_family).unwrap_err().to_string().contains("family"));
        let wide = FORMAT_6_18.replace("size:8;\tsigned:0;", "size:4;\tsigned:0;");
        assert!(parse_format(&wide).unwrap_err().to_string().contains("skaddr"));
    }
}
