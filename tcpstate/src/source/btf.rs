//! Offsets into kernel structures, from the kernel's BTF. Rust eBPF has no
//! CO-RE relocations, so userspace looks them up and hands them over.
//!
//! It needs four members, so it indexes the raw type section in one pass
//! and walks only the structs on the paths: a full BTF parser (btfparse)
//! builds every kernel type, which peaked at ~50 MiB of RSS at start.

use anyhow::{Context as _, anyhow, bail};
use tcpstate_ebpf::{SockOffsets, TW_PROGRAMS, TwOffsets};

const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";
const BTF_MAGIC: u16 = 0xeb9f;
const TYPE_HEADER: usize = 12;
// BTF kinds (include/uapi/linux/btf.h).
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_TYPEDEF: u32 = 8;
const KIND_FUNC: u32 = 12;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_TYPE_TAG: u32 = 18;

/// The type section of a BTF blob, indexed by type id.
struct Btf<'a> {
    types: &'a [u8],
    strings: &'a [u8],
    /// Byte offset of each type in `types`; id 0 is `void`.
    offsets: Vec<usize>,
}

fn u32_at(b: &[u8], at: usize) -> anyhow::Result<u32> {
    let bytes = b.get(at..at + 4).ok_or_else(|| anyhow!("BTF truncated at {at}"))?;
    Ok(u32::from_le_bytes(bytes.try_into()?))
}

/// Bytes that follow a type's 12-byte header, by kind.
fn extra_len(kind: u32, vlen: usize) -> anyhow::Result<usize> {
    Ok(match kind {
        1 | 14 | 17 => 4,             // INT, VAR, DECL_TAG
        2 | 7..=12 | 16 | 18 => 0,    // PTR, FWD, TYPEDEF..FUNC, FLOAT, TYPE_TAG
        3 => 12,                      // ARRAY
        4 | 5 | 15 | 19 => 12 * vlen, // STRUCT, UNION, DATASEC, ENUM64
        6 | 13 => 8 * vlen,           // ENUM, FUNC_PROTO
        other => bail!("unknown BTF kind {other}"),
    })
}

impl<'a> Btf<'a> {
    fn parse(data: &'a [u8]) -> anyhow::Result<Self> {
        if data.len() < 24 || u16::from_le_bytes([data[0], data[1]]) != BTF_MAGIC {
            bail!("not little-endian BTF");
        }
        let hdr_len = u32_at(data, 4)? as usize;
        let section = |off: usize, len: usize| -> anyhow::Result<&'a [u8]> {
            let start = hdr_len + u32_at(data, off)? as usize;
            let len = u32_at(data, len)? as usize;
            data.get(start..start + len).ok_or_else(|| anyhow!("BTF section out of bounds"))
        };
        let (types, strings) = (section(8, 12)?, section(16, 20)?);
        let mut offsets = vec![0];
        let mut at = 0;
        while at < types.len() {
            offsets.push(at);
            let info = u32_at(types, at + 4)?;
            at += TYPE_HEADER + extra_len((info >> 24) & 0x1f, (info & 0xffff) as usize)?;
        }
        Ok(Self { types, strings, offsets })
    }

    fn name(&self, name_off: u32) -> &[u8] {
        let rest = self.strings.get(name_off as usize..).unwrap_or_default();
        &rest[..rest.iter().position(|&b| b == 0).unwrap_or(rest.len())]
    }

    /// (kind, vlen, kind_flag, name offset, size-or-type) of type `id`.
    fn header(&self, id: u32) -> anyhow::Result<(u32, usize, bool, u32, u32)> {
        let at = *self.offsets.get(id as usize).ok_or_else(|| anyhow!("no BTF type {id}"))?;
        let info = u32_at(self.types, at + 4)?;
        Ok((
            (info >> 24) & 0x1f,
            (info & 0xffff) as usize,
            info >> 31 == 1,
            u32_at(self.types, at)?,
            u32_at(self.types, at + 8)?,
        ))
    }

    /// Follows typedefs and qualifiers to the underlying type.
    fn resolve(&self, mut id: u32) -> anyhow::Result<u32> {
        for _ in 0..32 {
            let (kind, _, _, _, next) = self.header(id)?;
            if !matches!(kind, KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG) {
                return Ok(id);
            }
            id = next;
        }
        bail!("BTF type chain too long at {id}")
    }

    fn struct_named(&self, name: &str) -> anyhow::Result<u32> {
        (1..self.offsets.len() as u32)
            .find(|&id| matches!(self.header(id), Ok((KIND_STRUCT, _, _, off, _)) if self.name(off) == name.as_bytes()))
            .ok_or_else(|| anyhow!("no struct {name} in BTF"))
    }

    /// Bit offset and type of `member` in struct or union `id`, looking
    /// into anonymous members as C does.
    fn member(&self, id: u32, member: &str) -> anyhow::Result<Option<(u32, u32)>> {
        let (kind, vlen, kind_flag, _, _) = self.header(self.resolve(id)?)?;
        if !matches!(kind, KIND_STRUCT | KIND_UNION) {
            return Ok(None);
        }
        let at = self.offsets[self.resolve(id)? as usize] + TYPE_HEADER;
        for i in 0..vlen {
            let m = at + 12 * i;
            let (name_off, ty, raw) =
                (u32_at(self.types, m)?, u32_at(self.types, m + 4)?, u32_at(self.types, m + 8)?);
            let bits = if kind_flag { raw & 0x00ff_ffff } else { raw };
            match self.name(name_off) {
                n if n == member.as_bytes() => return Ok(Some((bits, ty))),
                b"" => {
                    if let Some((inner, inner_ty)) = self.member(ty, member)? {
                        return Ok(Some((bits + inner, inner_ty)));
                    }
                }
                _ => {}
            }
        }
        Ok(None)
    }

    /// Byte offset of a dotted member path in struct `ty`.
    fn offset_of(&self, ty: &str, path: &str) -> anyhow::Result<u16> {
        let (mut id, mut bits) = (self.struct_named(ty)?, 0);
        for member in path.split('.') {
            let (at, next) = self.member(id, member)?.ok_or_else(|| anyhow!("no {ty}.{path} in BTF"))?;
            (bits, id) = (bits + at, next);
        }
        if bits % 8 != 0 {
            bail!("{ty}.{path} is a bitfield");
        }
        u16::try_from(bits / 8).with_context(|| format!("{ty}.{path} at byte {}", bits / 8))
    }
}

impl Btf<'_> {
    fn has_func(&self, name: &str) -> bool {
        (1..self.offsets.len() as u32)
            .any(|id| matches!(self.header(id), Ok((KIND_FUNC, _, _, off, _)) if self.name(off) == name.as_bytes()))
    }
}

/// What the program needs from the kernel's BTF, read in one pass.
#[derive(Clone, Debug)]
pub struct KernelBtf {
    pub sock: SockOffsets,
    /// For the exact timewait hooks; why not, if they cannot be used.
    pub tw: Result<TwOffsets, String>,
    /// Whether each `TW_PROGRAMS` function is in BTF (fentry needs it).
    pub tw_functions: [bool; TW_PROGRAMS.len()],
}

/// Looked up once per process: the kernel's BTF does not change under us.
pub fn kernel() -> anyhow::Result<&'static KernelBtf> {
    static CACHE: std::sync::OnceLock<Result<KernelBtf, String>> = std::sync::OnceLock::new();
    CACHE.get_or_init(|| lookup().map_err(|e| format!("{e:#}"))).as_ref().map_err(|e| anyhow!("{e}"))
}

fn lookup() -> anyhow::Result<KernelBtf> {
    let data = std::fs::read(VMLINUX_BTF).with_context(|| format!("reading {VMLINUX_BTF}"))?;
    let btf = Btf::parse(&data)?;
    let sock = SockOffsets {
        net: btf.offset_of("sock", "__sk_common.skc_net.net")?,
        net_inum: btf.offset_of("net", "ns.inum")?,
        // Optional: without it, sockets from before the start stay unowned.
        cookie: btf.offset_of("sock", "__sk_common.skc_cookie").unwrap_or(0),
        // Optional: without it, a reset after close() looks like a handover.
        err: btf.offset_of("sock", "sk_err").unwrap_or(0),
    };
    Ok(KernelBtf {
        sock,
        tw: tw_offsets(&btf, sock).map_err(|e| format!("{e:#}")),
        tw_functions: TW_PROGRAMS.map(|(_, function)| btf.has_func(function)),
    })
}

/// Where a timewait socket keeps its 4-tuple, substate and timer.
fn tw_offsets(btf: &Btf<'_>, sock: SockOffsets) -> anyhow::Result<TwOffsets> {
    let tw = |path: &str| btf.offset_of("inet_timewait_sock", path);
    let common = |member: &str| tw(&format!("__tw_common.{member}"));
    // The program reads a timewait socket's namespace with the socket's
    // offset: that holds only if both start with their sock_common.
    if common("skc_net.net")? != sock.net {
        bail!("inet_timewait_sock and sock keep their namespace at different offsets");
    }
    Ok(TwOffsets {
        daddr: common("skc_daddr")?,
        rcv_saddr: common("skc_rcv_saddr")?,
        dport: common("skc_dport")?,
        num: common("skc_num")?,
        family: common("skc_family")?,
        v6_daddr: common("skc_v6_daddr")?,
        v6_rcv_saddr: common("skc_v6_rcv_saddr")?,
        substate: tw("tw_substate")?,
        timer: tw("tw_timer")?,
        _pad: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Bytes(Vec<u8>);

    impl btfparse::Readable for Bytes {
        fn read(&self, offset: u64, buffer: &mut [u8]) -> btfparse::Result<()> {
            let start = offset as usize;
            match self.0.get(start..start + buffer.len()) {
                Some(src) => {
                    buffer.copy_from_slice(src);
                    Ok(())
                }
                None => Err(btfparse::Error::new(btfparse::ErrorKind::IOError, "past the end")),
            }
        }
    }

    /// The one-pass lookup agrees with a full BTF parser on this kernel.
    #[test]
    fn agrees_with_btfparse() {
        let Ok(data) = std::fs::read(VMLINUX_BTF) else { return };
        let ours = Btf::parse(&data).unwrap();
        let full = btfparse::TypeInformation::new(&Bytes(data.clone())).unwrap();
        for (ty, path) in [
            ("sock", "__sk_common.skc_net.net"),
            ("net", "ns.inum"),
            ("sock", "__sk_common.skc_family"),
            ("sock", "sk_protocol"),
            ("sock", "__sk_common.skc_cookie"),
            ("sock", "sk_err"),
            ("inet_timewait_sock", "tw_substate"),
        ] {
            let (_, want) = full.offset_of(full.id_of(ty).unwrap(), path).unwrap();
            let got = ours.offset_of(ty, path).map(|o| btfparse::Offset::ByteOffset(u32::from(o)));
            match want {
                btfparse::Offset::ByteOffset(_) => assert_eq!(got.unwrap(), want, "{ty}.{path}"),
                _ => assert!(got.is_err(), "{ty}.{path} is a bitfield"),
            }
        }
        let kernel = kernel().unwrap();
        let o = kernel.sock;
        assert!(o.net > 0 && o.net_inum > 0, "{o:?}");
        let tw = kernel.tw.clone().unwrap();
        for (path, got) in [
            ("__tw_common.skc_daddr", tw.daddr),
            ("__tw_common.skc_dport", tw.dport),
            ("__tw_common.skc_num", tw.num),
            ("__tw_common.skc_v6_rcv_saddr", tw.v6_rcv_saddr),
            ("tw_timer", tw.timer),
        ] {
            let id = full.id_of("inet_timewait_sock").unwrap();
            let (_, want) = full.offset_of(id, path).unwrap();
            assert_eq!(btfparse::Offset::ByteOffset(u32::from(got)), want, "{path}");
        }
        assert!(ours.has_func("tcp_time_wait") && !ours.has_func("no_such_function_here"));
        assert_eq!(kernel.tw_functions, [true; TW_PROGRAMS.len()], "this kernel has all the hooks");
    }

    #[test]
    fn rejects_garbage() {
        assert!(Btf::parse(b"not btf at all, not even close").is_err());
        assert!(
            Btf::parse(&[0x9f, 0xeb, 1, 0, 24, 0, 0, 0, 0, 0, 0, 0, 99, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0])
                .is_err()
        );
    }
}
