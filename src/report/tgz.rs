//! A `.tar.gz` of a few text files, for the support bundle: POSIX ustar entries (regular files,
//! mode 0644) in one gzip member (RFC 1952) whose deflate stream is stored blocks (RFC 1951,
//! `BTYPE 00`): any `tar xzf` reads it.
//!
//! Why not the `tar` and `flate2` crates: the bundle is a few hundred KiB of text made once in
//! a while, and the arm64 binary is within 40 KiB of the 6 MiB flash goal `.ci/cross.sh`
//! checks (6,251,520 bytes with this module); stored blocks need no compressor, only a
//! CRC-32. The cost is a bundle about three times the size a compressor would make.

/// Builds a tar archive in memory.
#[derive(Debug, Default)]
pub struct Tar {
    out: Vec<u8>,
}

impl Tar {
    /// Adds a regular file. `name` must fit ustar's 100 bytes (the bundle's names do).
    pub fn file(&mut self, name: &str, mtime: i64, data: &[u8]) {
        let mut h = [0u8; 512];
        let name = name.as_bytes();
        h[..name.len().min(100)].copy_from_slice(&name[..name.len().min(100)]);
        octal(&mut h[100..108], 0o644);
        octal(&mut h[108..116], 0);
        octal(&mut h[116..124], 0);
        octal(&mut h[124..136], data.len() as u64);
        octal(&mut h[136..148], mtime.max(0) as u64);
        h[156] = b'0';
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        // The checksum is taken with its own field as spaces.
        h[148..156].copy_from_slice(b"        ");
        let sum: u32 = h.iter().map(|b| u32::from(*b)).sum();
        octal(&mut h[148..155], u64::from(sum));
        h[155] = b' ';
        self.out.extend_from_slice(&h);
        self.out.extend_from_slice(data);
        let pad = (512 - data.len() % 512) % 512;
        self.out.resize(self.out.len() + pad, 0);
    }

    /// The archive, with its end (two zero blocks).
    pub fn finish(mut self) -> Vec<u8> {
        self.out.resize(self.out.len() + 1024, 0);
        self.out
    }
}

/// `v` in octal, zero-padded, NUL-terminated, filling `field`.
fn octal(field: &mut [u8], v: u64) {
    let digits = field.len() - 1;
    let s = format!("{v:0digits$o}");
    field[..digits].copy_from_slice(&s.as_bytes()[s.len() - digits..]);
    field[digits] = 0;
}

/// `data` as one gzip member of stored deflate blocks.
pub fn gzip(data: &[u8], mtime: i64) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + data.len() / 65_535 * 5 + 32);
    out.extend_from_slice(&[0x1f, 0x8b, 8, 0]);
    out.extend_from_slice(&(mtime.max(0) as u32).to_le_bytes());
    out.extend_from_slice(&[0, 3]);
    let mut blocks = data.chunks(65_535).peekable();
    if blocks.peek().is_none() {
        out.extend_from_slice(&[1, 0, 0, 0xff, 0xff]);
    }
    while let Some(block) = blocks.next() {
        out.push(u8::from(blocks.peek().is_none()));
        let len = block.len() as u16;
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&(!len).to_le_bytes());
        out.extend_from_slice(block);
    }
    out.extend_from_slice(&crc32(data).to_le_bytes());
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out
}

/// CRC-32 (IEEE 802.3, reflected), as gzip's trailer holds it.
fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for b in data {
        crc ^= u32::from(*b);
        for _ in 0..8 {
            crc = (crc >> 1) ^ (0xEDB8_8320 & (crc & 1).wrapping_neg());
        }
    }
    !crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_of_the_check_string() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(b""), 0);
    }

    /// The system's `tar` (and its gzip) reads what this writes, byte for byte, across a
    /// block boundary and for an empty file.
    #[test]
    fn the_system_tar_reads_it_back() {
        let dir = tempfile::tempdir().unwrap();
        let big: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let mut t = Tar::default();
        t.file("r/a.txt", 1_700_000_000, b"hello\n");
        t.file("r/big.bin", 1_700_000_000, &big);
        t.file("r/empty", 1_700_000_000, b"");
        let file = dir.path().join("x.tar.gz");
        std::fs::write(&file, gzip(&t.finish(), 1_700_000_000)).unwrap();
        let out = std::process::Command::new("tar")
            .arg("-xzf")
            .arg(&file)
            .arg("-C")
            .arg(dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let read = |n: &str| std::fs::read(dir.path().join("r").join(n)).unwrap();
        assert_eq!(read("a.txt"), b"hello\n");
        assert_eq!(read("big.bin"), big);
        assert!(read("empty").is_empty());
    }
}
