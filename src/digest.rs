//! The camera's digest of a whole file (INTERFACE.md section 8, `free_space_verify =
//! "receipt"`): a SHA-256 whose state can be saved after any byte and taken up again after a
//! restart, so a resumed upload ends with the digest of the whole file without reading the
//! part sent before the restart back from the card.
//!
//! Why not `sha2::Sha256`: its state cannot be saved. This keeps the eight state words, the
//! bytes compressed (a multiple of 64) and the tail of fewer than 64 bytes not compressed
//! yet, and compresses with `sha2::compress256` (SHA-NI or the ARMv8 SHA instructions where
//! the CPU has them, like `Sha256`). A saved state is 72 to 135 bytes.
//!
//! Invariant: [`FileDigest::finish`] equals `Sha256::digest` of every byte given to
//! [`FileDigest::update`], in order, across any number of saves and restores.

use sha2::digest::generic_array::GenericArray;

/// SHA-256's initial state (FIPS 180-4, 5.3.3).
const IV: [u32; 8] = [
    0x6a09_e667,
    0xbb67_ae85,
    0x3c6e_f372,
    0xa54f_f53a,
    0x510e_527f,
    0x9b05_688c,
    0x1f83_d9ab,
    0x5be0_cd19,
];

/// A SHA-256 in progress over a file's first [`FileDigest::len`] bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileDigest {
    state: [u32; 8],
    /// Bytes compressed into `state`: a multiple of 64.
    compressed: u64,
    /// The bytes after those, fewer than 64.
    tail: Vec<u8>,
}

impl Default for FileDigest {
    fn default() -> Self {
        FileDigest {
            state: IV,
            compressed: 0,
            tail: Vec::with_capacity(64),
        }
    }
}

impl FileDigest {
    /// Bytes hashed so far.
    pub fn len(&self) -> u64 {
        self.compressed + self.tail.len() as u64
    }

    /// Hashes the next bytes.
    pub fn update(&mut self, mut data: &[u8]) {
        if !self.tail.is_empty() {
            let take = (64 - self.tail.len()).min(data.len());
            self.tail.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.tail.len() < 64 {
                return;
            }
            let block = GenericArray::clone_from_slice(&self.tail);
            sha2::compress256(&mut self.state, &[block]);
            self.compressed += 64;
            self.tail.clear();
        }
        let whole = data.len() / 64 * 64;
        for block in data[..whole].chunks_exact(64) {
            sha2::compress256(&mut self.state, &[*GenericArray::from_slice(block)]);
        }
        self.compressed += whole as u64;
        self.tail.extend_from_slice(&data[whole..]);
    }

    /// The digest of the bytes hashed so far (the state goes on unchanged).
    pub fn finish(&self) -> [u8; 32] {
        let mut state = self.state;
        let bits = self.len().wrapping_mul(8);
        let mut pad = self.tail.clone();
        pad.push(0x80);
        while pad.len() % 64 != 56 {
            pad.push(0);
        }
        pad.extend_from_slice(&bits.to_be_bytes());
        for block in pad.chunks_exact(64) {
            sha2::compress256(&mut state, &[*GenericArray::from_slice(block)]);
        }
        let mut out = [0u8; 32];
        for (o, w) in out.chunks_exact_mut(4).zip(state) {
            o.copy_from_slice(&w.to_be_bytes());
        }
        out
    }

    /// The state as bytes, to be kept (the store's `sent_digest`): the words, the bytes
    /// compressed, the tail.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(40 + self.tail.len());
        for w in self.state {
            out.extend_from_slice(&w.to_be_bytes());
        }
        out.extend_from_slice(&self.compressed.to_be_bytes());
        out.extend_from_slice(&self.tail);
        out
    }

    /// A state [`FileDigest::to_bytes`] wrote; `None` for anything else (a row of another
    /// length, a count that is not whole blocks), which the caller treats as no state.
    pub fn from_bytes(b: &[u8]) -> Option<FileDigest> {
        if b.len() < 40 || b.len() >= 40 + 64 {
            return None;
        }
        let mut state = [0u32; 8];
        for (w, c) in state.iter_mut().zip(b[..32].chunks_exact(4)) {
            *w = u32::from_be_bytes(c.try_into().ok()?);
        }
        let compressed = u64::from_be_bytes(b[32..40].try_into().ok()?);
        if compressed % 64 != 0 {
            return None;
        }
        Some(FileDigest {
            state,
            compressed,
            tail: b[40..].to_vec(),
        })
    }
}

#[cfg(test)]
mod tests {
    use sha2::Digest as _;

    use super::*;

    fn data(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    #[test]
    fn equals_sha256_for_every_length_around_the_block_edges() {
        for n in [0, 1, 55, 56, 63, 64, 65, 119, 120, 128, 1000, 4097] {
            let d = data(n);
            let mut h = FileDigest::default();
            h.update(&d);
            assert_eq!(h.len(), n as u64);
            assert_eq!(
                h.finish(),
                <[u8; 32]>::from(sha2::Sha256::digest(&d)),
                "{n}"
            );
        }
    }

    #[test]
    fn a_state_saved_after_any_byte_and_restored_ends_with_the_same_digest() {
        let d = data(3 * 64 + 17);
        let want = <[u8; 32]>::from(sha2::Sha256::digest(&d));
        for cut in 0..d.len() {
            // Split the first part unevenly too, as PATCH bodies arrive in blocks.
            let mut h = FileDigest::default();
            h.update(&d[..cut / 3]);
            h.update(&d[cut / 3..cut]);
            let saved = h.to_bytes();
            let mut back = FileDigest::from_bytes(&saved).expect("a saved state reads back");
            assert_eq!(back, h);
            back.update(&d[cut..]);
            assert_eq!(back.finish(), want, "cut at {cut}");
        }
    }

    #[test]
    fn finishing_does_not_move_the_state() {
        let d = data(200);
        let mut h = FileDigest::default();
        h.update(&d[..100]);
        let _ = h.finish();
        h.update(&d[100..]);
        assert_eq!(h.finish(), <[u8; 32]>::from(sha2::Sha256::digest(&d)));
    }

    #[test]
    fn what_was_not_written_by_to_bytes_is_no_state() {
        assert_eq!(FileDigest::from_bytes(&[]), None);
        assert_eq!(FileDigest::from_bytes(&[0; 39]), None);
        assert_eq!(FileDigest::from_bytes(&[0; 104]), None);
        let mut odd = FileDigest::default().to_bytes();
        odd[39] = 3; // 3 bytes "compressed": not whole blocks
        assert_eq!(FileDigest::from_bytes(&odd), None);
    }
}
