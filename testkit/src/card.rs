//! A real camera card for the tests: a FAT32 or exFAT image, formatted by the real tools and
//! mounted through FUSE, so no kernel module is needed (issue 23).
//!
//! - FAT32: `mkfs.vfat` (dosfstools), served by testkit's own driver ([`crate::cardfs`]:
//!   rust-fatfs over the image, through `fuser`), and checked by `fsck.vfat -n` each time it
//!   is unmounted.
//! - exFAT: `mkfs.exfat` (exfatprogs) on the image, `losetup -f --show IMAGE`, then
//!   `mount.exfat-fuse /dev/loopN DIR` (exfat-fuse refuses a plain file).
//!
//! A [`Card`] is made and formatted with a random volume serial, with `DCIM/100MEDIA` on it as
//! a camera leaves a card it formats. [`Card::mount`] puts it in the slot (any directory, e.g.
//! a [`crate::camera::FakeCamera`]'s media root: the mount hides what is under it),
//! [`Card::pull`] takes it out (unmount, the image kept), [`Card::put_back`] mounts the same
//! image at the same place again, [`Card::reformat`] wipes it with a new serial, and dropping
//! it unmounts, detaches the loop device and removes the image.
//!
//! What these drivers do to a file's metadata (inodes renumbered on remount, 2 s / 1 s stamps,
//! the 1980 floor, case-insensitive names) is written down in docs/cards.md. Making a card needs root, `/dev/fuse` and the tools: see [`missing`].

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::camera::MEDIA_DIR;

/// The card's filesystem.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fs {
    /// FAT32 (SDHC cards, up to 32 GB), through [`crate::cardfs`].
    Fat32,
    /// exFAT (SDXC cards), through `exfat-fuse` on a loop device.
    Exfat,
}

impl Fs {
    /// Both, for tests that run on each.
    pub const ALL: [Fs; 2] = [Fs::Fat32, Fs::Exfat];

    /// The tools a card of this filesystem needs, and the Debian package of each.
    fn tools(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Fs::Fat32 => &[
                ("mkfs.vfat", "dosfstools"),
                ("fsck.vfat", "dosfstools"),
                ("blkid", "util-linux"),
            ],
            Fs::Exfat => &[
                ("mkfs.exfat", "exfatprogs"),
                ("tune.exfat", "exfatprogs"),
                ("mount.exfat-fuse", "exfat-fuse"),
                ("losetup", "mount"),
                ("fusermount", "fuse"),
                ("blkid", "util-linux"),
            ],
        }
    }

    /// A short name for messages and test output: `fat32` or `exfat`.
    pub fn name(self) -> &'static str {
        match self {
            Fs::Fat32 => "fat32",
            Fs::Exfat => "exfat",
        }
    }
}

/// How the card is mounted: the options a camera, a card reader or another computer may use.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MountOptions {
    /// Mounted read-only (a write-protected card): `-o ro` (exFAT's loop device read-only too).
    pub read_only: bool,
    /// The time zone the card is read in (a `TZ` value). FAT's stamps are local time without a
    /// zone: the FAT32 driver reads and writes them at this zone's offset from UTC (as it is
    /// now), so the same card shows other mtimes under another zone; exFAT keeps a UTC offset
    /// and is not moved by it (it is the exFAT driver process's `TZ`).
    pub tz: Option<String>,
    /// The owner every file shows (`-o uid=N`).
    pub uid: Option<u32>,
    /// The group every file shows (`-o gid=N`).
    pub gid: Option<u32>,
}

/// Why a card of `fs` cannot be made on this machine (not root, no `/dev/fuse`, a tool
/// missing), or `None` when it can. Tests print it and skip outside CI, and fail in CI.
pub fn missing(fs: Fs) -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root (mounting a card image needs root)".into());
    }
    if !Path::new("/dev/fuse").exists() {
        return Some("no /dev/fuse".into());
    }
    let absent: Vec<String> = fs
        .tools()
        .iter()
        .filter(|(tool, _)| which(tool).is_none())
        .map(|(tool, pkg)| format!("{tool} (apt-get install {pkg})"))
        .collect();
    if absent.is_empty() {
        None
    } else {
        Some(format!("{} card: missing {}", fs.name(), absent.join(", ")))
    }
}

fn which(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
}

/// A mounted card: testkit's FAT32 driver, or exFAT's FUSE server process and the loop device
/// it reads.
#[derive(Debug)]
enum Mounted {
    Fat(crate::cardfs::Mounted),
    Process { pid: u32, loop_dev: Option<String> },
}

/// A card image (see the module docs). Panics on a failure of the tools, with their output:
/// check [`missing`] first.
#[derive(Debug)]
pub struct Card {
    fs: Fs,
    dir: tempfile::TempDir,
    image: PathBuf,
    label: String,
    serial: String,
    mount_point: Option<PathBuf>,
    options: MountOptions,
    mounted: Option<Mounted>,
}

impl Card {
    /// A new card of `size_mib` MiB, formatted (label `CAMERA`, a random serial), with
    /// `DCIM/100MEDIA` on it; not mounted. FAT32 needs at least 33 MiB (512-byte clusters; 4 KiB
    /// from 300 MiB: see `fat32_sectors_per_cluster`). The image is sparse: its size costs the
    /// host's disk nothing until written.
    pub fn new(fs: Fs, size_mib: u64) -> Card {
        Card::with_label(fs, size_mib, "CAMERA")
    }

    /// Like [`Card::new`] with volume label `label` (at most 11 characters on FAT).
    pub fn with_label(fs: Fs, size_mib: u64, label: &str) -> Card {
        let dir = tempfile::Builder::new()
            .prefix(&format!("card-{}-", fs.name()))
            .tempdir()
            .expect("create the card's temp dir");
        let image = dir.path().join("card.img");
        let file = fs::File::create(&image).expect("create the card image");
        file.set_len(size_mib << 20).expect("size the card image");
        drop(file);
        let mut card = Card {
            fs,
            dir,
            image,
            label: label.into(),
            serial: String::new(),
            mount_point: None,
            options: MountOptions::default(),
            mounted: None,
        };
        card.format();
        card
    }

    /// The filesystem.
    pub fn fs(&self) -> Fs {
        self.fs
    }

    /// The image file.
    pub fn image(&self) -> &Path {
        &self.image
    }

    /// The volume label.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// The volume serial as `blkid` prints it (the filesystem's UUID): `XXXX-XXXX`, upper-case
    /// hex. A new card and each [`Card::reformat`] get a new random one.
    pub fn volume_serial(&self) -> String {
        self.serial.clone()
    }

    /// Where the card is (or was last) mounted.
    pub fn mount_point(&self) -> Option<&Path> {
        self.mount_point.as_deref()
    }

    /// Whether the card is mounted now.
    pub fn is_mounted(&self) -> bool {
        self.mounted.is_some()
    }

    /// The options of the last mount.
    pub fn options(&self) -> &MountOptions {
        &self.options
    }

    /// Mounts the card read-write at `dir` (created if missing; what is there is hidden).
    pub fn mount(&mut self, dir: &Path) {
        self.mount_with(dir, MountOptions::default());
    }

    /// Puts the card in `cam`'s slot: mounts it read-write on the camera's media root, which
    /// is emptied first, so a pulled card leaves an empty mount point as on a camera (the
    /// daemon reads an empty root as "card out", not as "every file deleted").
    pub fn insert(&mut self, cam: &crate::camera::FakeCamera) {
        let slot = cam.media_root();
        if !is_mount_point(&slot) {
            let _ = fs::remove_dir_all(&slot);
        }
        self.mount(&slot);
    }

    /// Mounts the card read-only at `dir`: a write-protected card.
    pub fn mount_read_only(&mut self, dir: &Path) {
        self.mount_with(
            dir,
            MountOptions {
                read_only: true,
                ..MountOptions::default()
            },
        );
    }

    /// Mounts the card at `dir` with `options`.
    pub fn mount_with(&mut self, dir: &Path, options: MountOptions) {
        assert!(self.mounted.is_none(), "the card is already mounted");
        fs::create_dir_all(dir).expect("create the card's mount point");
        let dir = dir.canonicalize().expect("canonicalize the mount point");
        self.mounted = Some(self.mount_at(&dir, &options));
        self.mount_point = Some(dir);
        self.options = options;
    }

    /// Takes the card out: unmounts it (lazily if something holds a file open, as a card
    /// pulled from the slot), waits for the driver to finish writing the image and exit, and
    /// detaches the loop device. The image stays for [`Card::put_back`].
    pub fn pull(&mut self) {
        let mounted = self.mounted.take().expect("the card is not mounted");
        let dir = self.mount_point.clone().expect("mount point");
        unmount(&dir, mounted);
        self.check();
    }

    /// A FAT32 image just unmounted is a clean file system: `fsck.vfat -n` finds nothing to
    /// repair (what the driver wrote is what a kernel `vfat` or a camera would read).
    fn check(&self) {
        if self.fs != Fs::Fat32 || std::thread::panicking() {
            return;
        }
        let out = Command::new("fsck.vfat")
            .arg("-n")
            .arg(&self.image)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("run fsck.vfat: {e}"));
        assert!(
            out.status.success(),
            "fsck.vfat -n {}: the card's FAT32 file system is damaged ({}):\n{}{}",
            self.image.display(),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Puts the same card back where it was, with the same options.
    pub fn put_back(&mut self) {
        let dir = self
            .mount_point
            .clone()
            .expect("the card was never mounted");
        let options = self.options.clone();
        self.mount_with(&dir, options);
    }

    /// Formats the card again: empty but for `DCIM/100MEDIA`, a new random serial, the same
    /// label. A mounted card is pulled, formatted and put back.
    pub fn reformat(&mut self) {
        let was_mounted = self.is_mounted();
        if was_mounted {
            self.pull();
        }
        self.format();
        if was_mounted {
            self.put_back();
        }
    }

    /// mkfs with a new serial, then `DCIM/100MEDIA` made through a private mount.
    fn format(&mut self) {
        let serial = fastrand::u32(..);
        let image = self.image.clone();
        match self.fs {
            Fs::Fat32 => {
                let size = fs::metadata(&image).expect("stat the card image").len();
                let serial = format!("{serial:08X}");
                let spc = fat32_sectors_per_cluster(size).to_string();
                run(Command::new("mkfs.vfat")
                    .args(["-F", "32", "-n", &self.label, "-i", &serial, "-s", &spc])
                    .arg(&image));
            }
            Fs::Exfat => {
                run(Command::new("mkfs.exfat")
                    .args(["-L", &self.label])
                    .arg(&image));
                run(Command::new("tune.exfat")
                    .args(["-I", &format!("0x{serial:08x}")])
                    .arg(&image));
            }
        }
        self.serial = probe_serial(&image);
        let want = format!("{:04X}-{:04X}", serial >> 16, serial & 0xffff);
        assert_eq!(self.serial, want, "blkid's serial of the new {image:?}");
        let private = self.dir.path().join("format");
        fs::create_dir_all(&private).expect("create the format mount point");
        let mounted = self.mount_at(&private, &MountOptions::default());
        fs::create_dir_all(private.join(MEDIA_DIR)).expect("create DCIM/100MEDIA on the card");
        unmount(&private, mounted);
        self.check();
    }

    /// Starts the FUSE driver on `dir` and finds its process.
    fn mount_at(&self, dir: &Path, options: &MountOptions) -> Mounted {
        let mut fuse_opts: Vec<String> = vec!["nonempty".into()];
        if let Some(uid) = options.uid {
            fuse_opts.push(format!("uid={uid}"));
        }
        if let Some(gid) = options.gid {
            fuse_opts.push(format!("gid={gid}"));
        }
        let (mut cmd, source, loop_dev): (Command, std::ffi::OsString, Option<String>) =
            match self.fs {
                Fs::Fat32 => {
                    let opts = crate::cardfs::Options {
                        read_only: options.read_only,
                        utc_offset_secs: utc_offset(options.tz.as_deref()),
                        uid: options.uid.unwrap_or(0),
                        gid: options.gid.unwrap_or(0),
                    };
                    let m = crate::cardfs::mount(&self.image, dir, &opts).unwrap_or_else(|e| {
                        panic!("mount the FAT32 card {:?} on {dir:?}: {e}", self.image)
                    });
                    return Mounted::Fat(m);
                }
                Fs::Exfat => {
                    if options.read_only {
                        fuse_opts.insert(0, "ro".into());
                    }
                    let mut losetup = Command::new("losetup");
                    losetup.arg("-f").arg("--show");
                    if options.read_only {
                        losetup.arg("-r");
                    }
                    let dev = run(losetup.arg(&self.image)).trim().to_string();
                    let mut cmd = Command::new("mount.exfat-fuse");
                    cmd.arg("-o").arg(fuse_opts.join(",")).arg(&dev).arg(dir);
                    (cmd, dev.clone().into(), Some(dev))
                }
            };
        if let Some(tz) = &options.tz {
            cmd.env("TZ", tz);
        }
        // The driver daemonizes once mounted.
        let out = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .unwrap_or_else(|e| panic!("run {cmd:?}: {e}"));
        if !out.status.success() || !is_mount_point(dir) {
            if let Some(dev) = &loop_dev {
                let _ = Command::new("losetup").arg("-d").arg(dev).status();
            }
            panic!(
                "{cmd:?} failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let pid = driver_pid(&source, dir)
            .unwrap_or_else(|| panic!("no FUSE driver process for {source:?} on {dir:?}"));
        Mounted::Process { pid, loop_dev }
    }
}

/// The offset east of UTC, in seconds, of time zone `tz` (a `TZ` value) now, or of this
/// process's zone: `date +%z` says it.
fn utc_offset(tz: Option<&str>) -> i64 {
    let mut cmd = Command::new("date");
    cmd.arg("+%z");
    if let Some(tz) = tz {
        cmd.env("TZ", tz);
    }
    let out = run(&mut cmd);
    let z = out.trim();
    let sign = if z.starts_with('-') { -1 } else { 1 };
    let digits = z.trim_start_matches(['+', '-']);
    let (h, m) = (
        digits.get(..2).and_then(|h| h.parse::<i64>().ok()),
        digits.get(2..4).and_then(|m| m.parse::<i64>().ok()),
    );
    match (h, m) {
        (Some(h), Some(m)) => sign * (h * 3600 + m * 60),
        _ => panic!("date +%z under TZ={tz:?} said {z:?}"),
    }
}

/// Sectors (of 512 bytes) per cluster for a FAT32 card of `bytes`: the largest the size allows,
/// up to 64 (32 KiB, what SDHC cards are formatted with). FAT32 needs at least 65,525 clusters.
fn fat32_sectors_per_cluster(bytes: u64) -> u64 {
    // Room for the reserved sectors and the two FATs.
    let data = bytes - bytes / 64;
    [64, 32, 16, 8, 4, 2, 1]
        .into_iter()
        .find(|s| data / (512 * s) >= 65_600)
        .unwrap_or(1)
}

impl Drop for Card {
    fn drop(&mut self) {
        if let (Some(m), Some(dir)) = (self.mounted.take(), self.mount_point.clone()) {
            unmount(&dir, m);
            self.check();
        }
    }
}

/// Unmounts `dir` (lazily when busy), waits for the driver to exit, detaches its loop device.
fn unmount(dir: &Path, mounted: Mounted) {
    let (pid, loop_dev) = match mounted {
        Mounted::Fat(m) => {
            if let Err(e) = m.unmount() {
                panic!("unmount the FAT32 card on {dir:?}: {e}");
            }
            return;
        }
        Mounted::Process { pid, loop_dev } => (pid, loop_dev),
    };
    let plain = Command::new("fusermount")
        .arg("-u")
        .arg(dir)
        .stderr(Stdio::null())
        .status();
    if !matches!(plain, Ok(s) if s.success()) {
        let _ = Command::new("fusermount")
            .args(["-u", "-z"])
            .arg(dir)
            .stderr(Stdio::null())
            .status();
    }
    // The driver writes the image until it exits: a remount before that would run two
    // drivers on one image. Once every open file on the lazily unmounted card is closed it
    // exits; a holder that never lets go is cut off after 10 s.
    let end = Instant::now() + Duration::from_secs(10);
    while process_alive(pid) && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(20));
    }
    if process_alive(pid) {
        // SAFETY: kill has no memory preconditions; the pid is the driver this card started.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        while process_alive(pid) {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    if let Some(dev) = loop_dev {
        let _ = Command::new("losetup").arg("-d").arg(&dev).status();
    }
}

/// Whether `pid` runs (a zombie counts as gone: the drivers are daemons, not our children).
fn process_alive(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// Whether `dir` is a mount point now (in this process's mount table).
fn is_mount_point(dir: &Path) -> bool {
    let table = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let want = dir.to_string_lossy();
    table
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .any(|mp| unescape_mountinfo(mp) == want)
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = (b[i] == b'\\' && i + 4 <= b.len())
            .then(|| u8::from_str_radix(&s[i + 1..i + 4], 8).ok())
            .flatten();
        match octal {
            Some(n) => {
                out.push(n);
                i += 4;
            }
            None => {
                out.push(b[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The process whose command line names both `source` and `dir`: the daemonized driver.
fn driver_pid(source: &std::ffi::OsStr, dir: &Path) -> Option<u32> {
    use std::os::unix::ffi::OsStrExt;
    let source = source.as_bytes();
    let dir = dir.as_os_str().as_bytes();
    fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let cmdline = fs::read(e.path().join("cmdline")).ok()?;
        let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
        (args.contains(&source) && args.contains(&dir) && process_alive(pid)).then_some(pid)
    })
}

/// The serial `blkid` reads from the image (`XXXX-XXXX`).
fn probe_serial(image: &Path) -> String {
    run(Command::new("blkid")
        .args(["-p", "-o", "value", "-s", "UUID"])
        .arg(image))
    .trim()
    .to_string()
}

/// Runs `cmd`, panicking with its output unless it succeeds; returns its stdout.
fn run(cmd: &mut Command) -> String {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout).trim(),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Made, mounted, written, pulled, put back (the bytes are there), reformatted (empty,
    /// another serial), read-only; on both filesystems.
    #[test]
    fn a_card_is_made_pulled_put_back_and_reformatted() {
        for fs in Fs::ALL {
            if let Some(why) = missing(fs) {
                assert!(
                    std::env::var_os("CI").is_none(),
                    "CI must run the card tests: {why}"
                );
                eprintln!("SKIPPED: {why}");
                continue;
            }
            let slot = tempfile::tempdir().unwrap();
            let mut card = Card::new(fs, 40);
            card.mount(slot.path());
            let photo = slot.path().join(MEDIA_DIR).join("IMG_0001.JPG");
            fs::write(&photo, b"photo").unwrap();
            let serial = card.volume_serial();
            card.pull();
            assert!(!photo.exists(), "{fs:?}: the card is out");
            card.put_back();
            assert_eq!(fs::read(&photo).unwrap(), b"photo", "{fs:?}");
            assert_eq!(probe_serial(card.image()), serial);
            card.reformat();
            assert!(card.is_mounted());
            assert!(slot.path().join(MEDIA_DIR).is_dir(), "{fs:?}");
            assert!(!photo.exists(), "{fs:?}: reformatted");
            assert_ne!(card.volume_serial(), serial, "{fs:?}");
            card.pull();
            card.mount_read_only(slot.path());
            assert!(
                fs::write(slot.path().join("x"), b"x").is_err(),
                "{fs:?}: read-only"
            );
            let image = card.image().to_path_buf();
            drop(card);
            assert!(!is_mount_point(&slot.path().canonicalize().unwrap()));
            assert!(!image.exists());
        }
    }

    /// What testkit's FAT32 driver keeps of FAT: names without case, 2-second stamps from 1980,
    /// inodes numbered anew at each mount, the 4 GiB limit, the card's real size, the image as
    /// the mount's source; and directories, renames and deletions that leave the image clean
    /// (each unmount runs `fsck.vfat -n`).
    #[test]
    fn the_fat32_driver_behaves_as_fat() {
        use std::os::unix::fs::MetadataExt;
        if let Some(why) = missing(Fs::Fat32) {
            assert!(std::env::var_os("CI").is_none(), "{why}");
            eprintln!("SKIPPED: {why}");
            return;
        }
        let slot = tempfile::tempdir().unwrap();
        let mut card = Card::new(Fs::Fat32, 40);
        card.mount(slot.path());
        let root = card.mount_point().unwrap().to_path_buf();
        let media = root.join(MEDIA_DIR);
        let names = [
            "IMG_0001.JPG",
            "IMG_0002.JPG",
            "Long name, with spaces.jpeg",
        ];
        for (i, n) in names.iter().enumerate() {
            fs::write(media.join(n), vec![i as u8; 5000 + i]).unwrap();
        }
        // Case-insensitive, case-preserving.
        assert_eq!(
            fs::read(media.join("img_0001.jpg")).unwrap(),
            vec![0u8; 5000]
        );
        fs::write(media.join("img_0002.jpg"), b"again").unwrap();
        let mut listed: Vec<String> = fs::read_dir(&media)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        listed.sort();
        assert_eq!(listed, names, "no second entry, the case as written");
        assert_eq!(fs::read(media.join("IMG_0002.JPG")).unwrap(), b"again");
        // Stamps: 2-second steps, and nothing before 1980-01-01 (UTC here).
        let set = |p: &Path, t: std::time::SystemTime| {
            let f = fs::File::options().write(true).open(p).unwrap();
            f.set_times(fs::FileTimes::new().set_accessed(t).set_modified(t))
                .unwrap();
            drop(f);
            fs::metadata(p).unwrap().modified().unwrap()
        };
        let epoch = std::time::UNIX_EPOCH;
        let p1 = media.join(names[0]);
        assert_eq!(
            set(&p1, epoch + Duration::from_secs(1_796_637_601)),
            epoch + Duration::from_secs(1_796_637_600)
        );
        assert_eq!(set(&p1, epoch), epoch + Duration::from_secs(315_532_800));
        // 4 GiB - 1 at most.
        let f = fs::File::options().write(true).open(&p1).unwrap();
        let err = f.set_len(1 << 32).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EFBIG), "{err}");
        drop(f);
        // The card's size, and the image as the mount's source (where the daemon reads the
        // serial).
        let out = run(Command::new("stat").args(["-f", "-c", "%b %a"]).arg(&root));
        let blocks: Vec<u64> = out.split_whitespace().map(|n| n.parse().unwrap()).collect();
        assert!(
            blocks[0] > 0 && blocks[1] > 0 && blocks[1] < blocks[0],
            "{out}"
        );
        let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap();
        let image = card.image().to_string_lossy().into_owned();
        assert!(
            mountinfo
                .lines()
                .any(|l| l.contains(&*root.to_string_lossy()) && l.contains(&image)),
            "{mountinfo}"
        );
        // Directories, renames, deletions.
        let deep = media.join("SUB/deeper");
        fs::create_dir_all(&deep).unwrap();
        fs::write(deep.join("x.bin"), vec![7u8; 70_000]).unwrap();
        fs::rename(deep.join("x.bin"), media.join("moved.bin")).unwrap();
        fs::rename(media.join(names[1]), media.join(names[2])).unwrap();
        assert_eq!(
            fs::read(media.join(names[2])).unwrap(),
            b"again",
            "replaced"
        );
        // A rename that only changes case does nothing (the kernel sees one inode under both
        // names), as on exfat-fuse.
        fs::rename(media.join("moved.bin"), media.join("MOVED.BIN")).unwrap();
        assert!(media.join("MOVED.BIN").exists());
        assert!(fs::remove_dir(media.join("SUB")).is_err(), "not empty");
        fs::remove_dir(&deep).unwrap();
        fs::remove_dir(media.join("SUB")).unwrap();
        // Inodes: numbered in the order names are looked up, anew at each mount.
        let inos = |order: &[&str]| -> Vec<u64> {
            order
                .iter()
                .map(|n| fs::metadata(media.join(n)).unwrap().ino())
                .collect()
        };
        let before = inos(&["MOVED.BIN", names[0], names[2]]);
        card.pull();
        card.put_back();
        let mut after = inos(&[names[2], names[0], "MOVED.BIN"]);
        after.reverse();
        assert_ne!(
            before, after,
            "the same files, other inodes after a remount"
        );
        assert_eq!(
            fs::read(media.join("moved.bin")).unwrap(),
            vec![7u8; 70_000]
        );
        // Read-only: nothing changes.
        card.pull();
        card.mount_read_only(slot.path());
        assert!(fs::remove_file(media.join("MOVED.BIN")).is_err());
        assert!(fs::create_dir(media.join("NEW")).is_err());
    }
}
