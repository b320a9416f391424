//! The card as a thing of its own: which card is in (its volume serial), and what a file on it
//! holds (a content fingerprint), for the decisions a file's metadata cannot settle on FAT and
//! exFAT: inodes are numbered anew at each mount, stamps are coarse (2 s, 10 ms), a camera
//! without a clock stamps every file at the 1980 floor, and FAT keeps no time zone (a mount
//! with another one moves every mtime by hours).
//!
//! Invariants: reading the card's serial never fails and never blocks on anything but the
//! card's own device: whatever cannot be read (no raw device, a file system without a serial,
//! a camera that does not let the daemon open the block device) is `None`, "unknown card";
//! a fingerprint covers the size and, for a file of up to [`WHOLE_UP_TO`], every byte, else
//! [`SAMPLES`] blocks of [`SAMPLE`] spread over the file, first and last included
//! (docs/ARCHITECTURE.md, "A file's identity", has why and what it costs).

use std::fmt;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use sha2::Digest;

/// Files up to this size are hashed whole: that costs no more than the samples of a larger one.
pub const WHOLE_UP_TO: u64 = 512 * 1024;
/// The length of one sample.
pub const SAMPLE: u64 = 64 * 1024;
/// Samples of a larger file: the first and last block, and the rest evenly spaced between.
pub const SAMPLES: u64 = 8;

/// A file's content fingerprint: SHA-256 over its size and its bytes (all, or the samples),
/// cut to 128 bits (a collision needs 2^64 files at one path, not a worry).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint([u8; 16]);

impl Fingerprint {
    /// The fingerprint of the regular file at `path`, opened without following a link, as
    /// long as its size is still `size` (else `Ok(None)`: it changed under us).
    pub fn of_path(path: &Path, size: u64) -> std::io::Result<Option<Fingerprint>> {
        use std::os::unix::fs::OpenOptionsExt;
        let f = std::fs::File::options()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)?;
        if f.metadata()?.len() != size {
            return Ok(None);
        }
        Fingerprint::of_file(&f, size).map(Some)
    }

    /// The fingerprint of `f`, whose size is `size`.
    pub fn of_file(f: &std::fs::File, size: u64) -> std::io::Result<Fingerprint> {
        let mut h = sha2::Sha256::new();
        h.update(size.to_le_bytes());
        if size <= WHOLE_UP_TO {
            let mut all = Vec::with_capacity(size as usize);
            let mut r: &std::fs::File = f;
            r.read_to_end(&mut all)?;
            h.update(&all);
        } else {
            let mut buf = vec![0u8; SAMPLE as usize];
            for at in sample_offsets(size) {
                f.read_exact_at(&mut buf, at)?;
                h.update(&buf);
            }
        }
        let mut out = [0u8; 16];
        out.copy_from_slice(&h.finalize()[..16]);
        Ok(Fingerprint(out))
    }

    /// The fingerprint's bytes, as the store keeps them.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// From the store's bytes; `None` if they are not a fingerprint's.
    pub fn from_bytes(b: &[u8]) -> Option<Fingerprint> {
        Some(Fingerprint(b.try_into().ok()?))
    }

    /// Lower-case hex, as the ledger and the logs show it.
    pub fn to_hex(self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// From [`Fingerprint::to_hex`]'s text.
    pub fn from_hex(s: &str) -> Option<Fingerprint> {
        if s.len() != 32 {
            return None;
        }
        let mut out = [0u8; 16];
        for (i, o) in out.iter_mut().enumerate() {
            *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        Some(Fingerprint(out))
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({})", self.to_hex())
    }
}

/// Where the samples of a file of `size` bytes (over [`WHOLE_UP_TO`]) start.
fn sample_offsets(size: u64) -> impl Iterator<Item = u64> {
    let last = size - SAMPLE;
    (0..SAMPLES).map(move |i| {
        if i == SAMPLES - 1 {
            last
        } else {
            last / (SAMPLES - 1) * i
        }
    })
}

/// A file's mtime before this (2000-01-01 UTC) says nothing about when it was written: the
/// floor a camera without a clock stamps (1980-01-01 on FAT and exFAT), or a clock that ran
/// from it. Two such files with one name and size are told apart by content alone.
pub const TRUSTED_STAMPS_FROM_NS: i64 = 946_684_800 * 1_000_000_000;

/// Whether an mtime can tell two files with one name and size apart.
pub fn stamp_is_trusted(mtime_ns: i64) -> bool {
    mtime_ns >= TRUSTED_STAMPS_FROM_NS
}

/// The card in the slot: its file system's serial (`1234-ABCD` as `blkid` shows FAT's and
/// exFAT's; another file system's UUID as `/dev/disk/by-uuid` names it), its label where it
/// has one, and whether it is mounted read-only (a write-protect switch, or the driver's
/// choice after an error).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Card {
    pub serial: Option<String>,
    pub label: Option<String>,
    pub read_only: bool,
}

impl Card {
    /// Reads what can be read about the card mounted at (or holding) `root`. Never fails:
    /// what cannot be read is left unknown.
    pub fn of_root(root: &Path) -> Card {
        let Some(m) = mount_of(root) else {
            return Card::default();
        };
        let (serial, label) = read_volume(&m.source)
            .or_else(|| by_uuid(&m.source).map(|s| (s, None)))
            .or_else(|| fuse_image(&m.point).and_then(|i| read_volume(&i)))
            .map_or((None, None), |(s, l)| (Some(s), l));
        Card {
            serial,
            label,
            read_only: m.read_only,
        }
    }

    /// How the card is named to the user: its label, else its serial.
    pub fn name(&self) -> Option<&str> {
        self.label.as_deref().or(self.serial.as_deref())
    }
}

/// Whether the file system holding `root` is mounted read-only (statvfs's `ST_RDONLY`): a card
/// whose write-protect switch is on, or one the driver turned read-only after an error. A
/// card that cannot be examined is not called read-only (other rules keep its files then).
pub fn mounted_read_only(root: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt as _;
    let Ok(path) = std::ffi::CString::new(root.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: a zeroed plain C struct, filled in by the call.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a NUL-terminated path and a struct the call fills in.
    if unsafe { libc::statvfs(path.as_ptr(), &mut st) } != 0 {
        return false;
    }
    st.f_flag & libc::ST_RDONLY != 0
}

/// The mount holding a path, from `/proc/self/mountinfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Mount {
    /// Where.
    point: PathBuf,
    /// What was mounted: a block device, or (FUSE) the image or device its helper was given.
    source: PathBuf,
    read_only: bool,
    /// The file system's type (`vfat`, `exfat`, `fuseblk`...).
    fstype: String,
}

/// The file system holding `root`: its mount point and type, from `/proc/self/mountinfo`
/// (for the support bundle).
pub fn filesystem_of(root: &Path) -> Option<(PathBuf, String)> {
    mount_of(root).map(|m| (m.point, m.fstype))
}

/// The mount whose mount point is the longest prefix of `root` (the last one mounted there).
fn mount_of(root: &Path) -> Option<Mount> {
    let root = root.canonicalize().unwrap_or_else(|_| root.to_path_buf());
    let text = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    parse_mountinfo(&text, &root)
}

/// `mountinfo(5)`: `id parent major:minor root mountpoint options [optional...] - fstype
/// source superoptions`; spaces in paths are written `\040`.
fn parse_mountinfo(text: &str, root: &Path) -> Option<Mount> {
    let mut best: Option<(usize, Mount)> = None;
    for line in text.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let l: Vec<&str> = left.split(' ').collect();
        let r: Vec<&str> = right.split(' ').collect();
        let (Some(point), Some(opts), Some(source)) = (l.get(4), l.get(5), r.get(1)) else {
            continue;
        };
        let point = PathBuf::from(unescape_mountinfo(point));
        if !root.starts_with(&point) {
            continue;
        }
        let depth = point.components().count();
        let read_only = opts.split(',').any(|o| o == "ro")
            || r.get(2).is_some_and(|s| s.split(',').any(|o| o == "ro"));
        let m = Mount {
            point: point.clone(),
            source: PathBuf::from(unescape_mountinfo(source)),
            read_only,
            fstype: r.first().map_or_else(String::new, |t| t.to_string()),
        };
        // A later line at the same depth is mounted over the earlier one.
        if best.as_ref().is_none_or(|(d, _)| depth >= *d) {
            best = Some((depth, m));
        }
    }
    best.map(|(_, m)| m)
}

fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(u8::is_ascii_digit) {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 4], 8) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The serial and label in the boot sector of `source` (a block device, or an image file a
/// FUSE driver was given), for FAT12/16/32 and exFAT. `None` if it cannot be opened (a camera
/// may not let the daemon read the raw device) or holds neither.
fn read_volume(source: &Path) -> Option<(String, Option<String>)> {
    let f = std::fs::File::open(source).ok()?;
    let mut boot = [0u8; 512];
    f.read_exact_at(&mut boot, 0).ok()?;
    let (serial, label) = parse_boot_sector(&boot)?;
    let label = label.or_else(|| exfat_label(&f, &boot));
    Some((serial, label))
}

/// exFAT keeps its label in the root directory (an entry of type 0x83, up to 11 UTF-16
/// characters), not in the boot sector: the first cluster of the root directory is read.
fn exfat_label(f: &std::fs::File, boot: &[u8; 512]) -> Option<String> {
    if &boot[3..11] != b"EXFAT   " {
        return None;
    }
    let u32_at = |at: usize| {
        u64::from(u32::from_le_bytes(
            boot[at..at + 4].try_into().expect("4 bytes"),
        ))
    };
    let (heap, root) = (u32_at(88), u32_at(96));
    let (bps, spc) = (u32::from(boot[108]), u32::from(boot[109]));
    if root < 2 || bps > 12 || bps + spc > 25 {
        return None;
    }
    let at = (heap + ((root - 2) << spc)) << bps;
    let mut dir = vec![0u8; 1usize << (bps + spc)];
    f.read_exact_at(&mut dir, at).ok()?;
    let entry = dir.chunks(32).find(|e| e[0] == 0x83)?;
    let n = usize::from(entry[1]).min(11);
    let units: Vec<u16> = entry[2..2 + 2 * n]
        .chunks(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect();
    Some(String::from_utf16_lossy(&units)).filter(|l| !l.is_empty())
}

/// The serial (`XXXX-XXXX`) and label of a FAT or exFAT boot sector.
pub fn parse_boot_sector(b: &[u8; 512]) -> Option<(String, Option<String>)> {
    let serial = |at: usize| {
        let v = u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"));
        format!("{:04X}-{:04X}", v >> 16, v & 0xFFFF)
    };
    let label = |at: usize| {
        let l = String::from_utf8_lossy(&b[at..at + 11])
            .trim_end()
            .to_string();
        (!l.is_empty() && l != "NO NAME").then_some(l)
    };
    if &b[3..11] == b"EXFAT   " {
        // VolumeSerialNumber at offset 100; the label is a directory entry, not read here.
        return Some((serial(100), None));
    }
    if b[510..512] != [0x55, 0xAA] {
        return None;
    }
    // FAT32's extended boot record starts at 0x40 (signature 0x29 at 0x42), FAT12/16's at 0x24.
    if &b[0x52..0x5A] == b"FAT32   " && b[0x42] == 0x29 {
        return Some((serial(0x43), label(0x47)));
    }
    if &b[0x36..0x3B] == b"FAT12" || &b[0x36..0x3B] == b"FAT16" {
        return (b[0x26] == 0x29).then(|| (serial(0x27), label(0x2B)));
    }
    None
}

/// The image or device a FUSE driver serves at `point`, where its mount does not name it
/// (fusefat's source is `fusefat`): the argument of the process whose command line names the
/// mount point that is a regular file or a block device. Paths are relative to its working
/// directory as it was started.
fn fuse_image(point: &Path) -> Option<PathBuf> {
    use std::os::unix::fs::FileTypeExt;
    for proc in std::fs::read_dir("/proc").ok()?.flatten() {
        let dir = proc.path();
        let Ok(cmdline) = std::fs::read(dir.join("cmdline")) else {
            continue;
        };
        let Ok(cwd) = std::fs::read_link(dir.join("cwd")) else {
            continue;
        };
        let args: Vec<PathBuf> = cmdline
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| cwd.join(<std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(a)))
            .collect();
        if !args
            .iter()
            .any(|a| a.canonicalize().ok().as_deref() == Some(point))
        {
            continue;
        }
        let image = args.iter().skip(1).find(|a| {
            std::fs::metadata(a).is_ok_and(|m| m.is_file() || m.file_type().is_block_device())
        });
        if let Some(i) = image {
            return Some(i.clone());
        }
    }
    None
}

/// The name of the `/dev/disk/by-uuid` link that points at `source`.
fn by_uuid(source: &Path) -> Option<String> {
    let dev = source.canonicalize().ok()?;
    std::fs::read_dir("/dev/disk/by-uuid")
        .ok()?
        .flatten()
        .find(|e| e.path().canonicalize().ok().as_deref() == Some(dev.as_path()))
        .map(|e| e.file_name().to_string_lossy().into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(path: &Path, bytes: &[u8]) {
        std::fs::write(path, bytes).unwrap();
    }

    #[test]
    fn a_fingerprint_changes_with_any_sampled_byte_and_the_size_and_never_otherwise() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        let big: Vec<u8> = (0..5_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
        write(&p, &big);
        let fp = |p: &Path, n| Fingerprint::of_path(p, n).unwrap().unwrap();
        let a = fp(&p, big.len() as u64);
        assert_eq!(
            a,
            fp(&p, big.len() as u64),
            "the same bytes, the same fingerprint"
        );
        for at in sample_offsets(big.len() as u64) {
            let mut other = big.clone();
            other[(at + SAMPLE / 2) as usize] ^= 1;
            write(&p, &other);
            assert_ne!(
                a,
                fp(&p, big.len() as u64),
                "a byte changed in the sample at {at}"
            );
        }
        // The last byte is always in a sample.
        let mut other = big.clone();
        *other.last_mut().unwrap() ^= 1;
        write(&p, &other);
        assert_ne!(a, fp(&p, big.len() as u64));
        // A small file: every byte counts.
        write(&p, b"abc");
        let small = fp(&p, 3);
        write(&p, b"abd");
        assert_ne!(small, fp(&p, 3));
        // The size counts too, and a size that moved under us is not fingerprinted.
        assert_eq!(Fingerprint::of_path(&p, 4).unwrap(), None);
        assert_eq!(Fingerprint::from_hex(&a.to_hex()), Some(a));
        assert_eq!(Fingerprint::from_bytes(a.as_bytes()), Some(a));
    }

    #[test]
    fn samples_cover_the_first_and_last_block_in_order() {
        for size in [WHOLE_UP_TO + 1, 5_000_000, 4 << 30, (4 << 30) + 12_345] {
            let at: Vec<u64> = sample_offsets(size).collect();
            assert_eq!(at.len() as u64, SAMPLES);
            assert_eq!(at[0], 0);
            assert_eq!(*at.last().unwrap(), size - SAMPLE, "size {size}");
            assert!(at.windows(2).all(|w| w[0] < w[1]), "{at:?}");
        }
    }

    #[test]
    fn the_serial_and_label_of_real_fat32_and_exfat_boot_sectors() {
        let mut fat = [0u8; 512];
        fat[3..11].copy_from_slice(b"mkfs.fat");
        fat[0x42] = 0x29;
        fat[0x43..0x47].copy_from_slice(&0x1234_ABCDu32.to_le_bytes());
        fat[0x47..0x52].copy_from_slice(b"CAMERA     ");
        fat[0x52..0x5A].copy_from_slice(b"FAT32   ");
        fat[510..512].copy_from_slice(&[0x55, 0xAA]);
        assert_eq!(
            parse_boot_sector(&fat),
            Some(("1234-ABCD".into(), Some("CAMERA".into())))
        );
        let mut exfat = [0u8; 512];
        exfat[3..11].copy_from_slice(b"EXFAT   ");
        exfat[100..104].copy_from_slice(&0xDEAD_BEEFu32.to_le_bytes());
        assert_eq!(parse_boot_sector(&exfat), Some(("DEAD-BEEF".into(), None)));
        assert_eq!(
            parse_boot_sector(&[0u8; 512]),
            None,
            "not a card's file system"
        );
    }

    #[test]
    fn serial_and_label_of_images_made_by_the_real_mkfs() {
        let d = tempfile::tempdir().unwrap();
        for (tool, args, want) in [
            (
                "mkfs.vfat",
                &["-F", "32", "-n", "TRIP_A", "-i", "1234ABCD"][..],
                "1234-ABCD",
            ),
            ("mkfs.exfat", &["-L", "TRIP_B"][..], ""),
        ] {
            let img = d.path().join(tool);
            std::fs::File::create(&img)
                .unwrap()
                .set_len(40 << 20)
                .unwrap();
            let Ok(out) = std::process::Command::new(tool)
                .args(args)
                .arg(&img)
                .output()
            else {
                let why =
                    format!("{tool} is not installed (apt-get install dosfstools exfatprogs)");
                // CI installs them: there a missing tool fails rather than skips.
                assert!(std::env::var_os("CI").is_none(), "{why}");
                eprintln!("SKIPPED: {why}");
                continue;
            };
            assert!(out.status.success(), "{tool}: {out:?}");
            let (serial, label) = read_volume(&img).unwrap();
            assert_eq!(serial.len(), 9, "{serial}");
            if !want.is_empty() {
                assert_eq!(serial, want);
            }
            let label = label.unwrap();
            assert!(label.starts_with("TRIP_"), "{tool}: {label}");
        }
    }

    #[test]
    fn the_mount_holding_the_root_is_the_deepest_and_latest_and_says_read_only() {
        let info = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
40 22 0:50 / /media/card rw,nosuid - fuseblk /dev/loop3 rw,user_id=0
41 40 0:51 / /media/card ro,nosuid - vfat /dev/mmcblk0p1 ro,fmask=0022
50 22 0:52 / /media/card\\040two rw - vfat /dev/sdb1 rw
";
        let m = parse_mountinfo(info, Path::new("/media/card/DCIM")).unwrap();
        assert_eq!(m.source, Path::new("/dev/mmcblk0p1"));
        assert!(m.read_only);
        let m = parse_mountinfo(info, Path::new("/media/card two")).unwrap();
        assert_eq!(
            (m.source.as_path(), m.read_only),
            (Path::new("/dev/sdb1"), false)
        );
        let m = parse_mountinfo(info, Path::new("/home")).unwrap();
        assert_eq!(m.source, Path::new("/dev/sda1"));
    }

    #[test]
    fn an_unreadable_card_is_an_unknown_one_never_an_error() {
        let d = tempfile::tempdir().unwrap();
        // A tmpfs or ext4 directory: whatever its mount's source, no FAT serial in it.
        let c = Card::of_root(&d.path().join("missing"));
        assert_eq!(c.label, None);
        assert_eq!(read_volume(Path::new("/nonexistent/device")), None);
    }
}
