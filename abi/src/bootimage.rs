//! The boot image: the one file the boot loader hands the kernel (QEMU `-initrd`), holding the
//! programs and data modules of a scenario, each with a name, arguments and a CRC-32.
//!
//! ```text
//! offset 0   Header  (HEADER_SIZE bytes, little-endian)
//!            magic "L4BOOTIM" | version u32 | count u32 | total_len u64 | crc32 u32 | 0 …
//!            crc32 covers bytes HEADER_SIZE..total_len
//! offset 64  Entry × count  (ENTRY_SIZE bytes each)
//!            name [u8; 32] NUL-padded | kind u32 | flags u32 | offset u64 | size u64
//!            | args_offset u64 | args_len u64 | crc32 u32 (of the payload) | 0 …
//! then       payloads and argument strings, each 8-byte aligned
//! ```
//! The kernel starts the programs flagged [`FLAG_START`], in table order; all other modules are
//! left for the runtime to find.

pub const MAGIC: [u8; 8] = *b"L4BOOTIM";
pub const VERSION: u32 = 1;
pub const HEADER_SIZE: usize = 64;
pub const ENTRY_SIZE: usize = 96;
pub const NAME_LEN: usize = 32;

/// The module is an ELF program.
pub const KIND_PROGRAM: u32 = 1;
/// The module is opaque data.
pub const KIND_DATA: u32 = 2;
/// The kernel starts this program as a boot task.
pub const FLAG_START: u32 = 1;
/// This boot task is sigma0: it receives all memory the kernel does not keep, and the other
/// boot tasks get an IPC gate to it as their pager.
pub const FLAG_SIGMA0: u32 = 2;

/// Why a boot image was rejected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParseError {
    Truncated,
    BadMagic,
    BadVersion(u32),
    ImageCrc,
    BadEntry(usize),
    ModuleCrc(usize),
}

impl core::fmt::Display for ParseError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            ParseError::Truncated => write!(f, "boot image truncated"),
            ParseError::BadMagic => write!(f, "not a boot image (bad magic)"),
            ParseError::BadVersion(v) => write!(f, "boot image version {v} unsupported"),
            ParseError::ImageCrc => write!(f, "boot image CRC mismatch (corrupt)"),
            ParseError::BadEntry(i) => write!(f, "boot image entry {i} out of bounds"),
            ParseError::ModuleCrc(i) => write!(f, "boot module {i} CRC mismatch (corrupt)"),
        }
    }
}

/// One module of a parsed image, borrowing from it.
#[derive(Clone, Copy, Debug)]
pub struct Module<'a> {
    pub name: &'a str,
    pub kind: u32,
    pub flags: u32,
    pub args: &'a str,
    pub data: &'a [u8],
}

/// A validated boot image.
#[derive(Clone, Copy, Debug)]
pub struct BootImage<'a> {
    bytes: &'a [u8],
    count: usize,
}

fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(off..off + 4)?.try_into().ok()?))
}

fn u64_at(b: &[u8], off: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(off..off + 8)?.try_into().ok()?))
}

fn slice(b: &[u8], off: u64, len: u64) -> Option<&[u8]> {
    let start = usize::try_from(off).ok()?;
    let end = start.checked_add(usize::try_from(len).ok()?)?;
    b.get(start..end)
}

impl<'a> BootImage<'a> {
    /// Checks the header, the image CRC and every entry's bounds and CRC.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, ParseError> {
        let head = bytes.get(..HEADER_SIZE).ok_or(ParseError::Truncated)?;
        if head[..8] != MAGIC {
            return Err(ParseError::BadMagic);
        }
        let version = u32_at(head, 8).ok_or(ParseError::Truncated)?;
        if version != VERSION {
            return Err(ParseError::BadVersion(version));
        }
        let count = u32_at(head, 12).ok_or(ParseError::Truncated)? as usize;
        let total = u64_at(head, 16).ok_or(ParseError::Truncated)?;
        let bytes = slice(bytes, 0, total).ok_or(ParseError::Truncated)?;
        if crc32fast::hash(&bytes[HEADER_SIZE..]) != u32_at(head, 24).ok_or(ParseError::Truncated)? {
            return Err(ParseError::ImageCrc);
        }
        let image = BootImage { bytes, count };
        for i in 0..count {
            let m = image.module(i)?;
            if crc32fast::hash(m.data) != image.entry_crc(i)? {
                return Err(ParseError::ModuleCrc(i));
            }
        }
        Ok(image)
    }

    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    fn entry(&self, i: usize) -> Result<&'a [u8], ParseError> {
        let off = HEADER_SIZE + i * ENTRY_SIZE;
        self.bytes.get(off..off + ENTRY_SIZE).ok_or(ParseError::BadEntry(i))
    }

    fn entry_crc(&self, i: usize) -> Result<u32, ParseError> {
        u32_at(self.entry(i)?, 80).ok_or(ParseError::BadEntry(i))
    }

    /// The module at index `i`.
    pub fn module(&self, i: usize) -> Result<Module<'a>, ParseError> {
        let bad = ParseError::BadEntry(i);
        let e = self.entry(i)?;
        let name_len = e[..NAME_LEN].iter().position(|&c| c == 0).unwrap_or(NAME_LEN);
        let name = core::str::from_utf8(&e[..name_len]).map_err(|_| bad)?;
        let field = |off| u64_at(e, off).ok_or(bad);
        let data = slice(self.bytes, field(40)?, field(48)?).ok_or(bad)?;
        let args = slice(self.bytes, field(56)?, field(64)?).ok_or(bad)?;
        Ok(Module {
            name,
            kind: u32_at(e, 32).ok_or(bad)?,
            flags: u32_at(e, 36).ok_or(bad)?,
            args: core::str::from_utf8(args).map_err(|_| bad)?,
            data,
        })
    }

    /// All modules in table order.
    pub fn modules(&self) -> impl Iterator<Item = Result<Module<'a>, ParseError>> + '_ {
        (0..self.count).map(|i| self.module(i))
    }
}

/// Builds boot images (host side).
#[cfg(any(feature = "alloc", test))]
pub mod builder {
    use super::*;
    use alloc::{string::String, vec::Vec};

    /// A module to be written.
    pub struct Entry {
        pub name: String,
        pub kind: u32,
        pub flags: u32,
        pub args: String,
        pub data: Vec<u8>,
    }

    fn align8(v: &mut Vec<u8>) {
        v.resize(v.len().next_multiple_of(8), 0);
    }

    /// Serialises `entries`; names longer than [`NAME_LEN`] bytes are an error.
    pub fn build(entries: &[Entry]) -> Result<Vec<u8>, String> {
        let mut out = alloc::vec![0u8; HEADER_SIZE + entries.len() * ENTRY_SIZE];
        for (i, e) in entries.iter().enumerate() {
            if e.name.len() > NAME_LEN || e.name.is_empty() {
                return Err(alloc::format!("module name {:?} must be 1..={NAME_LEN} bytes", e.name));
            }
            align8(&mut out);
            let data_off = out.len() as u64;
            out.extend_from_slice(&e.data);
            align8(&mut out);
            let args_off = out.len() as u64;
            out.extend_from_slice(e.args.as_bytes());
            let base = HEADER_SIZE + i * ENTRY_SIZE;
            let ent = &mut out[base..base + ENTRY_SIZE];
            ent[..e.name.len()].copy_from_slice(e.name.as_bytes());
            ent[32..36].copy_from_slice(&e.kind.to_le_bytes());
            ent[36..40].copy_from_slice(&e.flags.to_le_bytes());
            ent[40..48].copy_from_slice(&data_off.to_le_bytes());
            ent[48..56].copy_from_slice(&(e.data.len() as u64).to_le_bytes());
            ent[56..64].copy_from_slice(&args_off.to_le_bytes());
            ent[64..72].copy_from_slice(&(e.args.len() as u64).to_le_bytes());
            ent[80..84].copy_from_slice(&crc32fast::hash(&e.data).to_le_bytes());
        }
        align8(&mut out);
        let total = out.len() as u64;
        out[..8].copy_from_slice(&MAGIC);
        out[8..12].copy_from_slice(&VERSION.to_le_bytes());
        out[12..16].copy_from_slice(&(entries.len() as u32).to_le_bytes());
        out[16..24].copy_from_slice(&total.to_le_bytes());
        let crc = crc32fast::hash(&out[HEADER_SIZE..]);
        out[24..28].copy_from_slice(&crc.to_le_bytes());
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::builder::{build, Entry};
    use super::*;
    use alloc::{string::ToString, vec};

    fn sample() -> alloc::vec::Vec<u8> {
        build(&[
            Entry {
                name: "root".into(),
                kind: KIND_PROGRAM,
                flags: FLAG_START,
                args: "a b".into(),
                data: vec![1, 2, 3],
            },
            Entry { name: "blob".into(), kind: KIND_DATA, flags: 0, args: "".into(), data: vec![9; 100] },
        ])
        .unwrap()
    }

    #[test]
    fn round_trip() {
        let img = sample();
        let b = BootImage::parse(&img).unwrap();
        assert_eq!(b.len(), 2);
        let m = b.module(0).unwrap();
        assert_eq!(
            (m.name, m.kind, m.flags, m.args, m.data),
            ("root", KIND_PROGRAM, FLAG_START, "a b", &[1u8, 2, 3][..])
        );
        assert_eq!(b.module(1).unwrap().data.len(), 100);
    }

    #[test]
    fn corruption_is_detected() {
        let img = sample();
        let mut bad = img.clone();
        let last = bad.len() - 9;
        bad[last] ^= 0xff;
        assert!(matches!(BootImage::parse(&bad), Err(ParseError::ImageCrc)));
        assert_eq!(BootImage::parse(&img[..40]).unwrap_err(), ParseError::Truncated);
        assert_eq!(BootImage::parse(&img[..img.len() - 8]).unwrap_err(), ParseError::Truncated);
        let mut magic = img.clone();
        magic[0] = b'X';
        assert_eq!(BootImage::parse(&magic).unwrap_err(), ParseError::BadMagic);
        assert!(build(&[Entry {
            name: "x".repeat(33),
            kind: 1,
            flags: 0,
            args: "".to_string(),
            data: vec![]
        }])
        .is_err());
    }
}
