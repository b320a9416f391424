//! Deterministic pseudo-random content for media files: the same (seed, length) always gives
//! the same bytes, so a test can regenerate what it wrote, and incompressible-looking data
//! keeps any transport compression or dedup from flattering the numbers.

use std::fs::File;
use std::io::{self, Write};
use std::path::Path;

/// splitmix64: tiny, fast, and good enough that consecutive blocks never repeat.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

/// `len` deterministic pseudo-random bytes for `seed`.
pub fn sample_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    SplitMix(seed).fill(&mut out);
    out
}

/// A seed derived from a name (FNV-1a), so `DCIM/100MEDIA/A.JPG` always gets the same content.
pub fn seed_for(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Writes `len` bytes of [`sample_bytes`]`(seed, len)` to `path` in 1 MiB blocks, so large
/// files never sit in memory whole.
pub fn write_sample(path: &Path, seed: u64, len: u64) -> io::Result<()> {
    let mut file = io::BufWriter::new(File::create(path)?);
    let mut rng = SplitMix(seed);
    let mut block = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        // Blocks are multiples of 8 bytes, so the stream equals `sample_bytes` byte for byte.
        let n = left.min(block.len() as u64) as usize;
        rng.fill(&mut block[..n]);
        file.write_all(&block[..n])?;
        left -= n as u64;
    }
    file.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streamed_sample_equals_in_memory_sample() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let len = (1 << 20) + 13;
        write_sample(&path, 7, len as u64).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), sample_bytes(7, len));
        assert_ne!(sample_bytes(7, 64), sample_bytes(8, 64));
    }
}
