//! Offsets into kernel structures, from the kernel's BTF. Rust eBPF has no
//! CO-RE relocations, so userspace looks them up and hands them over.

use anyhow::{Context as _, anyhow};
use btfparse::{Offset, Readable, TypeInformation};
use tcpstate_ebpf::SockOffsets;

const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

struct Bytes(Vec<u8>);

impl Readable for Bytes {
    fn read(&self, offset: u64, buffer: &mut [u8]) -> btfparse::Result<()> {
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        let src = start.checked_add(buffer.len()).and_then(|end| self.0.get(start..end));
        match src {
            Some(src) => {
                buffer.copy_from_slice(src);
                Ok(())
            }
            None => Err(btfparse::Error::new(btfparse::ErrorKind::IOError, "read past the end of BTF")),
        }
    }
}

fn byte_offset(types: &TypeInformation, ty: &str, path: &str) -> anyhow::Result<u16> {
    let id = types.id_of(ty).ok_or_else(|| anyhow!("no struct {ty} in BTF"))?;
    let (_, offset) = types.offset_of(id, path).map_err(|e| anyhow!("{ty}.{path}: {e:?}"))?;
    match offset {
        Offset::ByteOffset(n) => u16::try_from(n).with_context(|| format!("{ty}.{path} at {n}")),
        other => Err(anyhow!("{ty}.{path} is a bitfield ({other:?})")),
    }
}

/// Where a socket's network namespace inode lives, for the program.
/// Parsed once per process: the kernel's BTF does not change under us.
pub fn sock_offsets() -> anyhow::Result<SockOffsets> {
    static CACHE: std::sync::OnceLock<Result<SockOffsets, String>> = std::sync::OnceLock::new();
    CACHE.get_or_init(|| lookup().map_err(|e| format!("{e:#}"))).clone().map_err(|e| anyhow!(e))
}

fn lookup() -> anyhow::Result<SockOffsets> {
    let bytes = std::fs::read(VMLINUX_BTF).with_context(|| format!("reading {VMLINUX_BTF}"))?;
    let types = TypeInformation::new(&Bytes(bytes)).map_err(|e| anyhow!("parsing kernel BTF: {e:?}"))?;
    Ok(SockOffsets {
        net: byte_offset(&types, "sock", "__sk_common.skc_net.net")?,
        net_inum: byte_offset(&types, "net", "ns.inum")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_netns_offsets_in_this_kernel() {
        if !std::path::Path::new(VMLINUX_BTF).exists() {
            return;
        }
        let o = sock_offsets().unwrap();
        assert!(o.net > 0 && o.net_inum > 0, "{o:?}");
    }
}
