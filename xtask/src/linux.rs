//! The Linux tenant's build-host side: Debian's stock kernel and the initramfs.
//!
//! [`kernel`] installs Debian's `linux-image-amd64` (the metapackage, then the
//! `linux-image-<release>` package it depends on) into `<cache>/linux/` without root:
//! `apt-get download` fetches the `.deb`, `dpkg-deb` unpacks its `/boot/vmlinuz-*`, and the
//! uncompressed `vmlinux` is extracted on this host from that same bzImage: the setup header
//! (Linux boot protocol ≥ 2.08, `Documentation/arch/x86/boot.rst`) gives the compressed payload's
//! offset and length, the payload is an XZ stream that the `xz` tool decompresses, and the result
//! must be an ELF64 x86-64 executable carrying the PVH entry note (`XEN_ELFNOTE_PHYS32_ENTRY`),
//! which is what the hypervisor's loader starts.
//!
//! [`initramfs`] writes an uncompressed newc cpio (Bochs has no time to spare for a
//! decompressor): busybox from Debian's `busybox-static` package with its applet links, the
//! `/init` script, `/dev/console`, and the static programs of `linux-guest/` (`tv-generate`,
//! `tv-hostile`).
//!
//! Cache: `$TENSORVISOR_CACHE` or `~/.cache/tensorvisor` ([`crate::model::cache_dir`]).

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

/// The Debian metapackage that names the current stock kernel.
pub const KERNEL_METAPACKAGE: &str = "linux-image-amd64";
/// The Debian package with the static busybox.
pub const BUSYBOX_PACKAGE: &str = "busybox-static";

/// Debian's stock kernel, installed in the cache.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinuxKernel {
    /// The uncompressed kernel (ELF64 x86-64 with a PVH entry note), extracted from `bzimage`.
    pub vmlinux: PathBuf,
    /// Debian's `/boot/vmlinuz-<release>`, unchanged.
    pub bzimage: PathBuf,
    /// The kernel release, e.g. `6.1.0-56-amd64`.
    pub version: String,
    /// The 32-bit guest-physical PVH entry point the vmlinux' note names.
    pub pvh_entry: u32,
    /// The end of the kernel's highest loadable segment in guest-physical memory (its
    /// `p_paddr + p_memsz`): the tenant's RAM must reach past it, with room for the initramfs
    /// and the kernel's own allocations (Debian's 6.1 kernel ends at 74 MiB and, with our
    /// initramfs, boots in QEMU with 88 MiB of RAM but not with 80).
    pub load_end: u64,
}

/// The directory the kernel and busybox are installed into.
pub fn cache_dir() -> PathBuf {
    crate::model::cache_dir().join("linux")
}

fn say(msg: &str) {
    eprintln!("xtask: linux: {msg}");
}

fn io_err(path: &Path, e: std::io::Error) -> String {
    format!("{}: {e}", path.display())
}

fn run_output(cmd: &mut Command) -> Result<Vec<u8>, String> {
    let out = cmd.output().map_err(|e| format!("cannot start {cmd:?}: {e}"))?;
    if out.status.success() {
        Ok(out.stdout)
    } else {
        Err(format!("{cmd:?} failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim()))
    }
}

/// Downloads package `name` into `dir` (unless a `.deb` of it is already there); returns the file.
fn download_deb(name: &str, dir: &Path) -> Result<PathBuf, String> {
    let find = || -> Result<Option<PathBuf>, String> {
        let prefix = format!("{name}_");
        let mut found = None;
        for e in fs::read_dir(dir).map_err(|e| io_err(dir, e))? {
            let p = e.map_err(|e| io_err(dir, e))?.path();
            let f = p.file_name().and_then(|f| f.to_str()).unwrap_or("");
            if f.starts_with(&prefix) && f.ends_with(".deb") {
                found = Some(p);
            }
        }
        Ok(found)
    };
    if let Some(p) = find()? {
        return Ok(p);
    }
    say(&format!("apt-get download {name} (into {})", dir.display()));
    run_output(Command::new("apt-get").args(["download", "-q", name]).current_dir(dir))?;
    find()?.ok_or_else(|| format!("apt-get download {name} left no {name}_*.deb in {}", dir.display()))
}

/// Reads a control field (`Depends`, `Version`, ...) of a `.deb`.
fn deb_field(deb: &Path, field: &str) -> Result<String, String> {
    let out = run_output(Command::new("dpkg-deb").arg("-f").arg(deb).arg(field))?;
    Ok(String::from_utf8_lossy(&out).trim().to_string())
}

/// The `linux-image-<release>` package a `linux-image-amd64` `Depends:` line names.
pub fn kernel_package_from_depends(depends: &str) -> Result<String, String> {
    depends
        .split(',')
        .flat_map(|alt| alt.split('|'))
        .map(|d| d.split_whitespace().next().unwrap_or(""))
        .find(|name| name.starts_with("linux-image-") && *name != KERNEL_METAPACKAGE && !name.contains("dbg"))
        .map(str::to_string)
        .ok_or_else(|| format!("{KERNEL_METAPACKAGE} depends on no linux-image-<release> package: {depends:?}"))
}

/// Unpacks the files under `member` (a path inside the package, like `./boot`) into `dest`:
/// `dpkg-deb --fsys-tarfile` piped into `tar`, so only what we need lands on disk (the kernel
/// package's modules are ~400 MB unpacked).
fn unpack_deb(deb: &Path, member: &str, dest: &Path) -> Result<(), String> {
    fs::create_dir_all(dest).map_err(|e| io_err(dest, e))?;
    let mut dpkg = Command::new("dpkg-deb")
        .arg("--fsys-tarfile")
        .arg(deb)
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start dpkg-deb: {e}"))?;
    let stdout = dpkg.stdout.take().ok_or("dpkg-deb: no stdout")?;
    let tar = Command::new("tar").arg("-x").arg("-C").arg(dest).arg(member).stdin(stdout).output();
    let dpkg_status = dpkg.wait().map_err(|e| format!("dpkg-deb: {e}"))?;
    let tar = tar.map_err(|e| format!("cannot start tar: {e}"))?;
    if !dpkg_status.success() || !tar.status.success() {
        return Err(format!(
            "unpacking {member} from {} failed (dpkg-deb {dpkg_status}, tar {}): {}",
            deb.display(),
            tar.status,
            String::from_utf8_lossy(&tar.stderr).trim()
        ));
    }
    Ok(())
}

/// Writes `bytes` to `path` through a temporary file and a rename, so a concurrent reader never
/// sees half a file. The temporary name is unique per process and per call, so threads of one
/// process (parallel tests building the same initramfs) never write each other's file.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), String> {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = path.with_extension(format!("tmp{}-{n}", std::process::id()));
    fs::write(&tmp, bytes).map_err(|e| io_err(&tmp, e))?;
    fs::rename(&tmp, path).map_err(|e| io_err(path, e))
}

static KERNEL: OnceLock<Result<LinuxKernel, String>> = OnceLock::new();

/// Installs Debian's stock kernel into `<cache>/linux/` (idempotent; no network once cached) and
/// returns the bzImage, the vmlinux extracted from it, the release and the PVH entry.
pub fn kernel() -> Result<LinuxKernel, String> {
    KERNEL.get_or_init(kernel_now).clone()
}

fn kernel_now() -> Result<LinuxKernel, String> {
    let dir = cache_dir();
    let (bzimage, vmlinux, version_file) = (dir.join("bzImage"), dir.join("vmlinux"), dir.join("version"));
    if let (Ok(version), true, true) = (fs::read_to_string(&version_file), bzimage.exists(), vmlinux.exists()) {
        // Cached: check the ELF again (cheap: the headers and notes only).
        let elf = fs::read(&vmlinux).map_err(|e| io_err(&vmlinux, e))?;
        let info = check_vmlinux(&elf).map_err(|e| format!("{} (delete {} to reinstall)", e, dir.display()))?;
        return Ok(LinuxKernel { vmlinux, bzimage, version: version.trim().to_string(), pvh_entry: info.pvh_entry, load_end: info.load_end });
    }
    let debs = dir.join("debs");
    fs::create_dir_all(&debs).map_err(|e| io_err(&debs, e))?;
    let meta = download_deb(KERNEL_METAPACKAGE, &debs)?;
    let package = kernel_package_from_depends(&deb_field(&meta, "Depends")?)?;
    let version = package.trim_start_matches("linux-image-").to_string();
    let deb = download_deb(&package, &debs)?;
    say(&format!("unpacking /boot/vmlinuz-{version} from {}", deb.display()));
    let unpacked = dir.join(format!("unpack{}", std::process::id()));
    let _ = fs::remove_dir_all(&unpacked);
    unpack_deb(&deb, &format!("./boot/vmlinuz-{version}"), &unpacked)?;
    let vmlinuz = unpacked.join("boot").join(format!("vmlinuz-{version}"));
    let image = fs::read(&vmlinuz).map_err(|e| io_err(&vmlinuz, e))?;
    let _ = fs::remove_dir_all(&unpacked);

    let payload = bzimage_payload(&image)?;
    say(&format!("decompressing the {} KiB XZ payload of the bzImage with xz", payload.len() / 1024));
    let raw = xz_decompress(payload)?;
    let info = check_vmlinux(&raw)?;
    say(&format!(
        "vmlinux: ELF64 x86-64, {} MiB (+{} KiB of KASLR relocations dropped), PVH entry {:#x}, loaded up to {:#x}",
        info.elf_len / (1024 * 1024),
        (raw.len() - info.elf_len) / 1024,
        info.pvh_entry,
        info.load_end
    ));
    write_atomic(&bzimage, &image)?;
    write_atomic(&vmlinux, &raw[..info.elf_len])?;
    write_atomic(&version_file, version.as_bytes())?;
    say(&format!("installed Debian's kernel {version} in {}", dir.display()));
    Ok(LinuxKernel { vmlinux, bzimage, version, pvh_entry: info.pvh_entry, load_end: info.load_end })
}

fn le16(b: &[u8], off: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(off..off + 2)?.try_into().ok()?))
}
fn le32(b: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(off..off + 4)?.try_into().ok()?))
}
fn le64(b: &[u8], off: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(off..off + 8)?.try_into().ok()?))
}

/// The magic bytes of an XZ stream (xz file format 1.0.4, §2.1.1.1).
pub const XZ_MAGIC: [u8; 6] = [0xfd, b'7', b'z', b'X', b'Z', 0x00];

/// The compressed kernel inside a bzImage: `payload_length` bytes at `payload_offset` from the
/// start of the protected-mode code, which begins after `(setup_sects + 1) * 512` bytes
/// (`setup_sects` 0 means 4). Linux boot protocol, `Documentation/arch/x86/boot.rst`: the boot
/// sector signature 0xAA55 at 0x1fe, "HdrS" at 0x202, the protocol version at 0x206 (≥ 2.08 for
/// the payload fields at 0x248/0x24c). Only XZ payloads are accepted (what Debian builds).
pub fn bzimage_payload(image: &[u8]) -> Result<&[u8], String> {
    if le16(image, 0x1fe) != Some(0xaa55) {
        return Err("not a bzImage: no 0xAA55 boot signature at 0x1fe".into());
    }
    if image.get(0x202..0x206) != Some(b"HdrS") {
        return Err("not a bzImage: no \"HdrS\" setup header at 0x202".into());
    }
    let version = le16(image, 0x206).unwrap_or(0);
    if version < 0x208 {
        return Err(format!("boot protocol {}.{:02} has no payload fields (need 2.08)", version >> 8, version & 0xff));
    }
    let setup_sects = match image[0x1f1] {
        0 => 4,
        n => n as usize,
    };
    let pm_start = (setup_sects + 1) * 512;
    let (off, len) = (le32(image, 0x248).unwrap_or(0) as usize, le32(image, 0x24c).unwrap_or(0) as usize);
    let start = pm_start.checked_add(off).ok_or("payload offset overflows")?;
    let payload = start
        .checked_add(len)
        .and_then(|end| image.get(start..end))
        .ok_or_else(|| format!("payload [{start:#x}, +{len:#x}) lies outside the {:#x}-byte image", image.len()))?;
    if !payload.starts_with(&XZ_MAGIC) {
        let head: Vec<String> = payload.iter().take(6).map(|b| format!("{b:02x}")).collect();
        return Err(format!("the bzImage payload is not XZ (starts {}); only XZ kernels are supported", head.join(" ")));
    }
    Ok(payload)
}

/// Decompresses the first XZ stream of `data` with the `xz` tool (the kernel's payload ends with
/// a 4-byte size after the stream, hence `--single-stream`).
pub fn xz_decompress(data: &[u8]) -> Result<Vec<u8>, String> {
    let mut child = Command::new("xz")
        .args(["--decompress", "--stdout", "--single-stream"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start xz (Debian package xz-utils): {e}"))?;
    let mut stdin = child.stdin.take().ok_or("xz: no stdin")?;
    let input = data.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let mut out = Vec::new();
    child.stdout.take().ok_or("xz: no stdout")?.read_to_end(&mut out).map_err(|e| format!("xz: {e}"))?;
    let mut err = String::new();
    let _ = child.stderr.take().map(|mut s| s.read_to_string(&mut err));
    let status = child.wait().map_err(|e| format!("xz: {e}"))?;
    let wrote = writer.join().map_err(|_| "xz: writer thread panicked")?;
    if !status.success() {
        return Err(format!("xz failed ({status}): {}", err.trim()));
    }
    // xz stops reading after the stream: a broken pipe on the trailer is expected.
    if let Err(e) = wrote {
        if e.kind() != std::io::ErrorKind::BrokenPipe {
            return Err(format!("xz: writing input: {e}"));
        }
    }
    Ok(out)
}

/// What [`check_vmlinux`] learned from the kernel ELF.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VmlinuxInfo {
    /// The 32-bit PVH entry (`XEN_ELFNOTE_PHYS32_ENTRY`, note type 18 of owner "Xen").
    pub pvh_entry: u32,
    /// The highest `p_paddr + p_memsz` of the loadable segments.
    pub load_end: u64,
    /// Bytes of the ELF proper (the program and section headers and every section); what follows
    /// in the decompressed payload is the KASLR relocation table, which a loader does not need.
    pub elf_len: usize,
}

/// Note type of the PVH entry point in the "Xen" notes (Xen's `public/elfnote.h`).
pub const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;

const PT_LOAD: u32 = 1;
const PT_NOTE: u32 = 4;
const SHT_NOBITS: u32 = 8;
const EM_X86_64: u16 = 62;
const ET_EXEC: u16 = 2;

/// Checks that `elf` is an ELF64 little-endian x86-64 executable with loadable segments and a PVH
/// entry note (System V ABI ELF header and note layout); returns the entry and the ELF's length.
pub fn check_vmlinux(elf: &[u8]) -> Result<VmlinuxInfo, String> {
    if elf.get(..4) != Some(b"\x7fELF") {
        return Err("vmlinux: not an ELF file".into());
    }
    if elf[4] != 2 || elf[5] != 1 {
        return Err("vmlinux: not ELF64 little-endian".into());
    }
    let (etype, machine) = (le16(elf, 16).unwrap_or(0), le16(elf, 18).unwrap_or(0));
    if machine != EM_X86_64 || etype != ET_EXEC {
        return Err(format!("vmlinux: e_type {etype}, e_machine {machine}: not an x86-64 executable"));
    }
    let bad = |what: &str| format!("vmlinux: {what} out of bounds");
    let (phoff, shoff) = (le64(elf, 32).ok_or_else(|| bad("header"))?, le64(elf, 40).ok_or_else(|| bad("header"))?);
    let (phentsize, phnum) = (le16(elf, 54).unwrap_or(0) as u64, le16(elf, 56).unwrap_or(0) as u64);
    let (shentsize, shnum) = (le16(elf, 58).unwrap_or(0) as u64, le16(elf, 60).unwrap_or(0) as u64);
    if phentsize < 56 || phnum == 0 {
        return Err("vmlinux: no program headers".into());
    }
    let mut end = (phoff + phentsize * phnum).max(shoff + shentsize * shnum);
    let mut pvh = None;
    let mut loads = 0;
    let mut load_end = 0u64;
    for i in 0..phnum {
        let ph = usize::try_from(phoff + i * phentsize).map_err(|_| bad("program header"))?;
        let ptype = le32(elf, ph).ok_or_else(|| bad("program header"))?;
        let off = le64(elf, ph + 8).ok_or_else(|| bad("program header"))?;
        let filesz = le64(elf, ph + 32).ok_or_else(|| bad("program header"))?;
        end = end.max(off + filesz);
        if ptype == PT_LOAD {
            loads += 1;
            let paddr = le64(elf, ph + 24).ok_or_else(|| bad("program header"))?;
            let memsz = le64(elf, ph + 40).ok_or_else(|| bad("program header"))?;
            load_end = load_end.max(paddr.checked_add(memsz).ok_or_else(|| bad("a segment's physical end"))?);
        }
        if ptype == PT_NOTE {
            let notes = usize::try_from(off)
                .ok()
                .zip(usize::try_from(off + filesz).ok())
                .and_then(|(a, b)| elf.get(a..b))
                .ok_or_else(|| bad("note segment"))?;
            pvh = pvh.or(find_note(notes, b"Xen", XEN_ELFNOTE_PHYS32_ENTRY).and_then(|d| le32(d, 0)));
        }
    }
    if shentsize >= 64 {
        for i in 0..shnum {
            let sh = usize::try_from(shoff + i * shentsize).map_err(|_| bad("section header"))?;
            let (stype, off, size) = (le32(elf, sh + 4), le64(elf, sh + 24), le64(elf, sh + 32));
            let (Some(stype), Some(off), Some(size)) = (stype, off, size) else { return Err(bad("section header")) };
            if stype != SHT_NOBITS {
                end = end.max(off + size);
            }
        }
    }
    if loads == 0 {
        return Err("vmlinux: no loadable segment".into());
    }
    let elf_len = usize::try_from(end).ok().filter(|&e| e <= elf.len()).ok_or_else(|| bad("a segment or section"))?;
    let pvh_entry = pvh.ok_or("vmlinux: no PVH entry note (Xen note type 18); is CONFIG_PVH set?")?;
    Ok(VmlinuxInfo { pvh_entry, load_end, elf_len })
}

/// The descriptor of the first note of owner `name` and type `ntype` in a note segment (each
/// note: namesz, descsz, type, then the name and descriptor, each padded to 4 bytes).
fn find_note<'a>(mut notes: &'a [u8], name: &[u8], ntype: u32) -> Option<&'a [u8]> {
    let pad = |n: usize| n.checked_add(3).map(|n| n & !3);
    while notes.len() >= 12 {
        let (namesz, descsz, t) = (le32(notes, 0)? as usize, le32(notes, 4)? as usize, le32(notes, 8)?);
        let name_end = 12usize.checked_add(pad(namesz)?)?;
        let desc_end = name_end.checked_add(pad(descsz)?)?;
        let n = notes.get(12..12 + namesz)?;
        let desc = notes.get(name_end..name_end + descsz)?;
        if t == ntype && n.strip_suffix(&[0]).unwrap_or(n) == name {
            return Some(desc);
        }
        notes = notes.get(desc_end..)?;
    }
    None
}

// ---------------------------------------------------------------------------------------------
// The initramfs.

/// What `/init` does after the programs ran.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InitMode {
    /// Runs the scenario (tv-generate, tv-hostile), prints `tensorvisor-linux: done` and
    /// `reboot -f` (the hypervisor stops the tenant on the reset).
    Test,
    /// Runs the demo (tv-generate), then an interactive `/bin/sh` on the console.
    Shell,
}

impl InitMode {
    pub fn name(self) -> &'static str {
        match self {
            InitMode::Test => "test",
            InitMode::Shell => "shell",
        }
    }
}

/// The first line `/init` prints: the marker that the kernel reached user space.
pub const INIT_MARKER: &str = "tensorvisor-linux: init up";
/// The line `/init` prints after mounting /proc and /sys: the kernel's uptime at that point
/// (`/proc/uptime`, seconds) and its clock event device
/// (`/sys/devices/system/clockevents/clockevent0/current_device`).
pub const PLATFORM_MARKER: &str = "tensorvisor-linux: platform";
/// The last line `/init` prints in [`InitMode::Test`] before `reboot -f`.
pub const DONE_MARKER: &str = "tensorvisor-linux: done";

/// The `/init` script for `mode` (busybox `sh`). Programs take the tenant's arguments from the
/// kernel command line themselves (`tv.prompt=`, ...; see `linux-guest/`), so `/init` is the same
/// for every tenant.
pub fn init_script(mode: InitMode, programs: &[&str]) -> String {
    let mut s = String::from("#!/bin/sh\n");
    s.push_str(&format!("echo '{INIT_MARKER}'\n"));
    s.push_str("mount -t proc proc /proc\nmount -t sysfs sysfs /sys\nmount -t devtmpfs devtmpfs /dev 2>/dev/null\n");
    // Shell builtins only (`read`), no extra applets.
    s.push_str("read up idle < /proc/uptime\nread ce < /sys/devices/system/clockevents/clockevent0/current_device\n");
    s.push_str(&format!("echo \"{PLATFORM_MARKER}: uptime=${{up}}s clockevent=$ce\"\n"));
    let run: Vec<&str> = match mode {
        InitMode::Test => programs.to_vec(),
        InitMode::Shell => programs.iter().copied().filter(|p| *p == "tv-generate").collect(),
    };
    for p in &run {
        s.push_str(&format!("/bin/{p} || echo \"tensorvisor-linux: {p} exited with status $?\"\n"));
    }
    match mode {
        InitMode::Test => {
            s.push_str(&format!("echo '{DONE_MARKER}'\nreboot -f\n"));
            // `reboot -f` returns only if the reset failed: never let init exit (a kernel panic).
            s.push_str("while true; do sleep 1; done\n");
        }
        InitMode::Shell => {
            s.push_str("echo 'tensorvisor-linux: shell (busybox; tv-generate and tv-hostile are in /bin)'\n");
            s.push_str("while true; do setsid cttyhack /bin/sh; done\n");
        }
    }
    s
}

/// The kernel command-line words that hand a tenant's `infer`-style arguments
/// (`prompt=2,302 max_tokens=8 temp=0`) to the initramfs programs: each `key=value` becomes
/// `tv.key=value` (the kernel keeps dotted words to itself; `tv-generate` reads them from
/// `/proc/cmdline`, see `linux-guest/`). Refuses words that are not `key=value` of plain
/// characters, so nothing can smuggle other kernel parameters in.
pub fn kernel_args(tenant_args: &str) -> Result<String, String> {
    let mut out = Vec::new();
    for w in tenant_args.split_whitespace() {
        let (k, v) = w.split_once('=').ok_or_else(|| format!("tenant argument {w:?} is not key=value"))?;
        let plain = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "_.,-+".contains(c));
        if !plain(k) || !plain(v) || k.contains('.') {
            return Err(format!("tenant argument {w:?}: want key=value of letters, digits and _.,-+"));
        }
        out.push(format!("tv.{k}={v}"));
    }
    Ok(out.join(" "))
}

/// A newc ("070701") cpio archive being written (the format the kernel unpacks into its rootfs,
/// `Documentation/driver-api/early-userspace/buffer-format.rst`): a 110-byte ASCII header of 13
/// eight-digit hex fields, the NUL-terminated name, padding to 4 bytes, the data, padding to 4
/// bytes; the archive ends with an entry named `TRAILER!!!`.
#[derive(Default)]
pub struct Cpio {
    out: Vec<u8>,
    next_ino: u32,
}

/// File type bits of `mode` (POSIX `<sys/stat.h>`).
pub const S_IFMT: u32 = 0o170000;
pub const S_IFDIR: u32 = 0o040000;
pub const S_IFREG: u32 = 0o100000;
pub const S_IFLNK: u32 = 0o120000;
pub const S_IFCHR: u32 = 0o020000;

impl Cpio {
    pub fn new() -> Self {
        Self { out: Vec::new(), next_ino: 1 }
    }

    fn entry(&mut self, name: &str, mode: u32, rdev: (u32, u32), data: &[u8]) -> Result<(), String> {
        if name.is_empty() || name.starts_with('/') || name.contains('\0') || name.split('/').any(|c| c == "..") {
            return Err(format!("cpio: bad entry name {name:?}"));
        }
        let size = u32::try_from(data.len()).map_err(|_| format!("cpio: {name} is over 4 GiB"))?;
        let ino = self.next_ino;
        self.next_ino += 1;
        let nlink = if mode & S_IFMT == S_IFDIR { 2 } else { 1 };
        let fields = [ino, mode, 0, 0, nlink, 0, size, 0, 0, rdev.0, rdev.1, name.len() as u32 + 1, 0];
        self.out.extend_from_slice(b"070701");
        for f in fields {
            self.out.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(0);
        self.pad();
        self.out.extend_from_slice(data);
        self.pad();
        Ok(())
    }

    fn pad(&mut self) {
        while !self.out.len().is_multiple_of(4) {
            self.out.push(0);
        }
    }

    pub fn dir(&mut self, name: &str) -> Result<(), String> {
        self.entry(name, S_IFDIR | 0o755, (0, 0), &[])
    }

    pub fn file(&mut self, name: &str, perm: u32, data: &[u8]) -> Result<(), String> {
        self.entry(name, S_IFREG | (perm & 0o7777), (0, 0), data)
    }

    pub fn symlink(&mut self, name: &str, target: &str) -> Result<(), String> {
        self.entry(name, S_IFLNK | 0o777, (0, 0), target.as_bytes())
    }

    pub fn char_dev(&mut self, name: &str, perm: u32, major: u32, minor: u32) -> Result<(), String> {
        self.entry(name, S_IFCHR | (perm & 0o7777), (major, minor), &[])
    }

    /// Ends the archive with the trailer entry and returns its bytes.
    pub fn finish(mut self) -> Vec<u8> {
        // The trailer is an ordinary entry with nlink 1 and no data; its name is always valid.
        let _ = self.entry("TRAILER!!!", 0, (0, 0), &[]);
        self.out
    }
}

/// Installs busybox-static into the cache; returns the static binary's path.
fn busybox() -> Result<PathBuf, String> {
    let dir = cache_dir();
    let bin = dir.join("busybox");
    if bin.exists() {
        return Ok(bin);
    }
    let debs = dir.join("debs");
    fs::create_dir_all(&debs).map_err(|e| io_err(&debs, e))?;
    let deb = download_deb(BUSYBOX_PACKAGE, &debs)?;
    let unpacked = dir.join(format!("unpack-busybox{}", std::process::id()));
    let _ = fs::remove_dir_all(&unpacked);
    unpack_deb(&deb, "./bin/busybox", &unpacked)?;
    let got = unpacked.join("bin").join("busybox");
    let bytes = fs::read(&got).map_err(|e| io_err(&got, e))?;
    let _ = fs::remove_dir_all(&unpacked);
    write_atomic(&bin, &bytes)?;
    set_executable(&bin)?;
    say(&format!("installed busybox-static in {}", bin.display()));
    Ok(bin)
}

fn set_executable(p: &Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(p, fs::Permissions::from_mode(0o755)).map_err(|e| io_err(p, e))
}

/// The applets busybox was built with, as paths relative to `/` (`bin/sh`, `sbin/reboot`, ...).
fn busybox_applets(busybox: &Path) -> Result<Vec<String>, String> {
    let out = run_output(Command::new(busybox).arg("--list-full"))?;
    let list: Vec<String> = String::from_utf8_lossy(&out)
        .lines()
        .map(|l| l.trim().trim_start_matches('/').to_string())
        .filter(|l| !l.is_empty() && !l.contains(".."))
        .collect();
    // What /init uses.
    for need in ["sh", "echo", "mount", "reboot", "sleep", "setsid", "cttyhack"] {
        if !list.iter().any(|l| l.rsplit('/').next() == Some(need)) {
            return Err(format!("busybox has no `{need}` applet"));
        }
    }
    Ok(list)
}

/// Builds the initramfs cpio; `programs` are (name, static binary) pairs installed as `/bin/name`.
pub fn build_cpio(mode: InitMode, busybox: &[u8], applets: &[String], programs: &[(&str, Vec<u8>)]) -> Result<Vec<u8>, String> {
    let mut c = Cpio::new();
    let mut dirs: Vec<String> = vec!["bin".into(), "sbin".into(), "usr".into(), "usr/bin".into(), "usr/sbin".into()];
    for d in ["dev", "proc", "sys", "tmp", "root", "etc"] {
        dirs.push(d.into());
    }
    for a in applets {
        if let Some((parent, _)) = a.rsplit_once('/') {
            let mut acc = String::new();
            for part in parent.split('/') {
                acc = if acc.is_empty() { part.to_string() } else { format!("{acc}/{part}") };
                if !dirs.contains(&acc) {
                    dirs.push(acc.clone());
                }
            }
        }
    }
    for d in &dirs {
        c.dir(d)?;
    }
    // The kernel opens /dev/console for init's stdio before init runs: it must be in the archive
    // (devtmpfs is mounted over /dev only later, by /init). Major 5, minor 1: devices.txt.
    c.char_dev("dev/console", 0o600, 5, 1)?;
    c.file("bin/busybox", 0o755, busybox)?;
    for a in applets {
        if a != "bin/busybox" && !programs.iter().any(|(n, _)| *a == format!("bin/{n}")) {
            c.symlink(a, "/bin/busybox")?;
        }
    }
    for (name, bin) in programs {
        c.file(&format!("bin/{name}"), 0o755, bin)?;
    }
    let names: Vec<&str> = programs.iter().map(|(n, _)| *n).collect();
    c.file("init", 0o755, init_script(mode, &names).as_bytes())?;
    Ok(c.finish())
}

/// The Linux target the programs are built for, linked statically (`+crt-static`: glibc's
/// static libc.a, no dynamic loader in the initramfs).
pub const LINUX_TARGET: &str = "x86_64-unknown-linux-gnu";
/// The programs of `linux-guest/` that go into `/bin`.
pub const PROGRAMS: [&str; 2] = ["tv-generate", "tv-hostile"];

static PROGRAMS_BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();

/// Builds `linux-guest/`'s programs as static executables (once per process; their own target
/// directory, so the static RUSTFLAGS never invalidate the host build); returns their directory.
pub fn build_programs() -> Result<PathBuf, String> {
    PROGRAMS_BUILT.get_or_init(build_programs_now).clone()
}

fn build_programs_now() -> Result<PathBuf, String> {
    let root = crate::root();
    let target_dir = root.join("target").join("linux-static");
    say(&format!("building {} for {LINUX_TARGET} (static)", PROGRAMS.join(", ")));
    let out = Command::new(env!("CARGO"))
        .args(["build", "--release", "--package", "linux-guest", "--target", LINUX_TARGET, "--target-dir"])
        .arg(&target_dir)
        .env("RUSTFLAGS", "-C target-feature=+crt-static -C strip=symbols")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .current_dir(&root)
        .output()
        .map_err(|e| format!("cannot start cargo: {e}"))?;
    if !out.status.success() {
        return Err(format!("building linux-guest failed:\n{}", String::from_utf8_lossy(&out.stderr)));
    }
    let dir = target_dir.join(LINUX_TARGET).join("release");
    for p in PROGRAMS {
        let bin = fs::read(dir.join(p)).map_err(|e| io_err(&dir.join(p), e))?;
        check_static(&bin).map_err(|e| format!("{p}: {e}"))?;
    }
    Ok(dir)
}

/// A program for the initramfs must be a static x86-64 executable: no `PT_INTERP` (the
/// initramfs has no dynamic loader).
pub fn check_static(elf: &[u8]) -> Result<(), String> {
    const PT_INTERP: u32 = 3;
    if elf.get(..4) != Some(b"\x7fELF") || elf.get(4) != Some(&2) || le16(elf, 18) != Some(EM_X86_64) {
        return Err("not an ELF64 x86-64 file".into());
    }
    let (phoff, phentsize, phnum) = (le64(elf, 32).unwrap_or(0) as usize, le16(elf, 54).unwrap_or(0) as usize, le16(elf, 56).unwrap_or(0) as usize);
    for i in 0..phnum {
        let t = le32(elf, phoff + i * phentsize).ok_or("program headers out of bounds")?;
        if t == PT_INTERP {
            return Err("dynamically linked (has an interpreter)".into());
        }
    }
    Ok(())
}

/// Builds the initramfs for `mode` under `build/linux/` and returns its path: an uncompressed
/// newc cpio with busybox-static, `/init`, `/dev/console` and the `linux-guest/` programs.
pub fn initramfs(mode: InitMode) -> Result<PathBuf, String> {
    let bb = busybox()?;
    let applets = busybox_applets(&bb)?;
    let busybox_bytes = fs::read(&bb).map_err(|e| io_err(&bb, e))?;
    let dir = build_programs()?;
    let mut programs: Vec<(&str, Vec<u8>)> = Vec::new();
    for p in PROGRAMS {
        programs.push((p, fs::read(dir.join(p)).map_err(|e| io_err(&dir.join(p), e))?));
    }
    let cpio = build_cpio(mode, &busybox_bytes, &applets, &programs)?;
    let out = crate::image::build_dir().join("linux");
    fs::create_dir_all(&out).map_err(|e| io_err(&out, e))?;
    let path = out.join(format!("initramfs-{}.cpio", mode.name()));
    write_atomic(&path, &cpio)?;
    say(&format!("initramfs ({}): {} KiB, {} busybox applets, at {}", mode.name(), cpio.len() / 1024, applets.len(), path.display()));
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parses a newc archive back: (name, mode, rdev, data) per entry, checking every field.
    type Entry = (String, u32, (u32, u32), Vec<u8>);

    fn parse_cpio(mut a: &[u8]) -> Vec<Entry> {
        let mut out = Vec::new();
        let total = a.len();
        loop {
            assert_eq!(&a[..6], b"070701", "magic at offset {}", total - a.len());
            let f = |i: usize| u32::from_str_radix(std::str::from_utf8(&a[6 + 8 * i..14 + 8 * i]).unwrap(), 16).unwrap();
            let (mode, size, rmaj, rmin, namesize, check) = (f(1), f(6) as usize, f(9), f(10), f(11) as usize, f(12));
            assert_eq!(check, 0);
            let name = std::str::from_utf8(&a[110..110 + namesize - 1]).unwrap().to_string();
            assert_eq!(a[110 + namesize - 1], 0, "name is NUL-terminated");
            let data_at = (110 + namesize + 3) & !3;
            let data = a[data_at..data_at + size].to_vec();
            let next = (data_at + size + 3) & !3;
            assert_eq!((total - a.len() + next) % 4, 0);
            a = &a[next..];
            if name == "TRAILER!!!" {
                assert!(a.is_empty(), "nothing after the trailer");
                return out;
            }
            out.push((name, mode, (rmaj, rmin), data));
        }
    }

    #[test]
    fn cpio_entries_round_trip_with_newc_layout() {
        let mut c = Cpio::new();
        c.dir("bin").unwrap();
        c.file("bin/a", 0o755, b"hello").unwrap();
        c.symlink("bin/sh", "/bin/busybox").unwrap();
        c.char_dev("dev/console", 0o600, 5, 1).unwrap();
        c.file("init", 0o755, &[]).unwrap();
        let bytes = c.finish();
        assert_eq!(bytes.len() % 4, 0);
        // The first header, byte for byte: ino 1, mode 040755, nlink 2, namesize 4 ("bin\0").
        let first = std::str::from_utf8(&bytes[..110]).unwrap();
        let fields = ["00000001", "000041ed", "00000000", "00000000", "00000002", "00000000", "00000000"];
        let devs = ["00000000", "00000000", "00000000", "00000000"];
        assert_eq!(first, format!("070701{}{}0000000400000000", fields.concat(), devs.concat()));
        let e = parse_cpio(&bytes);
        let names: Vec<&str> = e.iter().map(|x| x.0.as_str()).collect();
        assert_eq!(names, ["bin", "bin/a", "bin/sh", "dev/console", "init"]);
        assert_eq!(e[1].1, S_IFREG | 0o755);
        assert_eq!(e[1].3, b"hello");
        assert_eq!((e[2].1, e[2].3.as_slice()), (S_IFLNK | 0o777, &b"/bin/busybox"[..]));
        assert_eq!((e[3].1, e[3].2), (S_IFCHR | 0o600, (5, 1)));
        assert!(e[4].3.is_empty());
    }

    #[test]
    fn cpio_rejects_names_that_escape_the_root() {
        let mut c = Cpio::new();
        assert!(c.file("/etc/passwd", 0o644, b"").is_err());
        assert!(c.file("a/../../x", 0o644, b"").is_err());
        assert!(c.file("", 0o644, b"").is_err());
    }

    #[test]
    fn the_initramfs_has_console_busybox_links_programs_and_init() {
        let applets = vec!["bin/sh".to_string(), "sbin/reboot".to_string(), "usr/bin/env".to_string(), "bin/busybox".to_string()];
        let progs = vec![("tv-generate", b"ELFgen".to_vec()), ("tv-hostile", b"ELFhostile".to_vec())];
        let cpio = build_cpio(InitMode::Test, b"BUSYBOX", &applets, &progs).unwrap();
        let e = parse_cpio(&cpio);
        let get = |n: &str| e.iter().find(|x| x.0 == n).unwrap_or_else(|| panic!("no {n}"));
        assert_eq!(get("dev/console").2, (5, 1));
        assert_eq!(get("bin/busybox").3, b"BUSYBOX");
        assert_eq!(get("usr/bin/env").3, b"/bin/busybox");
        assert_eq!(get("usr/bin").1, S_IFDIR | 0o755);
        assert_eq!(get("bin/tv-hostile").3, b"ELFhostile");
        // Every parent directory comes before its entries.
        let pos = |n: &str| e.iter().position(|x| x.0 == n).unwrap();
        assert!(pos("usr") < pos("usr/bin") && pos("usr/bin") < pos("usr/bin/env"));
        let init = String::from_utf8(get("init").3.clone()).unwrap();
        assert!(init.starts_with(&format!("#!/bin/sh\necho '{INIT_MARKER}'\n")));
        assert!(init.find(PLATFORM_MARKER).unwrap() > init.find("mount -t sysfs").unwrap());
        let (g, h, d) = (init.find("/bin/tv-generate").unwrap(), init.find("/bin/tv-hostile").unwrap(), init.find(DONE_MARKER).unwrap());
        assert!(g < h && h < d && d < init.find("reboot -f").unwrap());
        let shell = init_script(InitMode::Shell, &["tv-generate", "tv-hostile"]);
        assert!(shell.contains("/bin/tv-generate") && !shell.contains("/bin/tv-hostile ||"));
        assert!(shell.contains("cttyhack /bin/sh") && !shell.contains("reboot"));
    }

    #[test]
    fn tenant_arguments_become_dotted_kernel_words() {
        assert_eq!(kernel_args("prompt=2,302 max_tokens=8  temp=0.9").unwrap(), "tv.prompt=2,302 tv.max_tokens=8 tv.temp=0.9");
        assert_eq!(kernel_args("").unwrap(), "");
        assert!(kernel_args("init=/bin/sh").is_err(), "a path is not a plain value");
        assert!(kernel_args("quiet").is_err());
        assert!(kernel_args("a.b=1").is_err());
        assert!(kernel_args("x=\"y\"").is_err());
    }

    #[test]
    fn depends_line_names_the_release_package() {
        assert_eq!(kernel_package_from_depends("linux-image-6.1.0-56-amd64 (= 6.1.192-2)").unwrap(), "linux-image-6.1.0-56-amd64");
        assert!(kernel_package_from_depends("libc6 (>= 2.36)").is_err());
    }

    /// A minimal ELF64 x86-64 executable: one PT_LOAD and one PT_NOTE holding a GNU note and the
    /// Xen PVH entry note, no sections.
    fn synthetic_elf(pvh: Option<u32>) -> Vec<u8> {
        let mut notes = Vec::new();
        let mut note = |name: &[u8], t: u32, desc: &[u8]| {
            notes.extend_from_slice(&(name.len() as u32 + 1).to_le_bytes());
            notes.extend_from_slice(&(desc.len() as u32).to_le_bytes());
            notes.extend_from_slice(&t.to_le_bytes());
            notes.extend_from_slice(name);
            notes.push(0);
            while !notes.len().is_multiple_of(4) {
                notes.push(0);
            }
            notes.extend_from_slice(desc);
            while !notes.len().is_multiple_of(4) {
                notes.push(0);
            }
        };
        note(b"GNU", 3, &[0xaa; 20]);
        if let Some(e) = pvh {
            note(b"Xen", XEN_ELFNOTE_PHYS32_ENTRY, &e.to_le_bytes());
        }
        let mut elf = vec![0u8; 64 + 2 * 56];
        elf[..4].copy_from_slice(b"\x7fELF");
        elf[4] = 2;
        elf[5] = 1;
        elf[6] = 1;
        elf[16..18].copy_from_slice(&ET_EXEC.to_le_bytes());
        elf[18..20].copy_from_slice(&EM_X86_64.to_le_bytes());
        elf[32..40].copy_from_slice(&64u64.to_le_bytes());
        elf[54..56].copy_from_slice(&56u16.to_le_bytes());
        elf[56..58].copy_from_slice(&2u16.to_le_bytes());
        let text = vec![0x90u8; 300];
        let text_off = elf.len() as u64;
        let notes_off = text_off + text.len() as u64;
        let mut ph = |i: usize, t: u32, off: u64, len: u64| {
            let p = 64 + i * 56;
            elf[p..p + 4].copy_from_slice(&t.to_le_bytes());
            elf[p + 8..p + 16].copy_from_slice(&off.to_le_bytes());
            elf[p + 32..p + 40].copy_from_slice(&len.to_le_bytes());
            elf[p + 40..p + 48].copy_from_slice(&len.to_le_bytes());
        };
        ph(0, PT_LOAD, text_off, text.len() as u64);
        ph(1, PT_NOTE, notes_off, notes.len() as u64);
        elf.extend_from_slice(&text);
        elf.extend_from_slice(&notes);
        elf
    }

    fn xz_compress(data: &[u8]) -> Vec<u8> {
        let dir = std::env::temp_dir().join(format!("tv-linux-xz-{}-{:?}", std::process::id(), std::thread::current().id()));
        fs::create_dir_all(&dir).unwrap();
        let f = dir.join("in");
        fs::write(&f, data).unwrap();
        let out = Command::new("xz").args(["--format=xz", "--check=crc32", "--stdout"]).arg(&f).output().unwrap();
        let _ = fs::remove_dir_all(&dir);
        assert!(out.status.success());
        out.stdout
    }

    /// A bzImage-shaped file: boot sector and setup header (setup_sects 2), then the
    /// protected-mode code with the payload at `payload_offset`, followed by the 4-byte size
    /// trailer the kernel build appends.
    fn synthetic_bzimage(payload: &[u8], version: u16) -> Vec<u8> {
        let mut img = vec![0u8; 3 * 512];
        img[0x1f1] = 2;
        img[0x1fe..0x200].copy_from_slice(&0xaa55u16.to_le_bytes());
        img[0x202..0x206].copy_from_slice(b"HdrS");
        img[0x206..0x208].copy_from_slice(&version.to_le_bytes());
        img.extend_from_slice(&[0xcc; 0x40]); // the decompressor's code, before the payload
        img[0x248..0x24c].copy_from_slice(&0x40u32.to_le_bytes());
        img[0x24c..0x250].copy_from_slice(&(payload.len() as u32 + 4).to_le_bytes());
        img.extend_from_slice(payload);
        img.extend_from_slice(&12345u32.to_le_bytes());
        img.extend_from_slice(&[0xee; 100]); // what follows the payload in the image
        img
    }

    #[test]
    fn payload_extraction_recovers_the_elf_and_its_pvh_entry() {
        let elf = synthetic_elf(Some(0x0100_0abc));
        let mut with_relocs = elf.clone();
        with_relocs.extend_from_slice(&[0x55; 64]); // KASLR relocations after the ELF
        let img = synthetic_bzimage(&xz_compress(&with_relocs), 0x20f);
        let raw = xz_decompress(bzimage_payload(&img).unwrap()).unwrap();
        assert_eq!(raw, with_relocs);
        let info = check_vmlinux(&raw).unwrap();
        assert_eq!(info, VmlinuxInfo { pvh_entry: 0x0100_0abc, load_end: 300, elf_len: elf.len() });
    }

    #[test]
    fn malformed_images_and_kernels_are_refused_with_reasons() {
        let payload = xz_compress(&synthetic_elf(Some(1)));
        let good = synthetic_bzimage(&payload, 0x20f);
        let mut no_sig = good.clone();
        no_sig[0x1fe] = 0;
        assert!(bzimage_payload(&no_sig).unwrap_err().contains("0xAA55"));
        assert!(bzimage_payload(&synthetic_bzimage(&payload, 0x206)).unwrap_err().contains("2.06"));
        let mut too_long = good.clone();
        too_long[0x24c..0x250].copy_from_slice(&0x10_0000u32.to_le_bytes());
        assert!(bzimage_payload(&too_long).unwrap_err().contains("outside"));
        let gzip = synthetic_bzimage(&[0x1f, 0x8b, 8, 0, 0, 0, 0, 0], 0x20f);
        assert!(bzimage_payload(&gzip).unwrap_err().contains("not XZ"));
        let mut corrupt = payload.clone();
        let mid = corrupt.len() / 2;
        corrupt[mid] ^= 0xff;
        assert!(xz_decompress(&corrupt).is_err());

        assert!(check_vmlinux(&synthetic_elf(None)).unwrap_err().contains("PVH"));
        let mut arm = synthetic_elf(Some(1));
        arm[18] = 183; // EM_AARCH64
        assert!(check_vmlinux(&arm).unwrap_err().contains("x86-64"));
        let mut truncated = synthetic_elf(Some(1));
        truncated.truncate(200);
        assert!(check_vmlinux(&truncated).is_err());
        assert!(check_vmlinux(b"MZ not an elf").is_err());
    }

    /// On the real kernel (installed into the cache on first use, as the engine's tests install
    /// their model): Debian's bzImage payload decompresses to the installed vmlinux plus its
    /// relocations.
    #[test]
    fn the_cached_debian_kernel_extracts_to_the_installed_vmlinux() {
        let k = kernel().expect("installing Debian's kernel");
        let (img, vmlinux) = (fs::read(&k.bzimage).unwrap(), fs::read(&k.vmlinux).unwrap());
        let raw = xz_decompress(bzimage_payload(&img).unwrap()).unwrap();
        let info = check_vmlinux(&raw).unwrap();
        assert_eq!(&raw[..info.elf_len], &vmlinux[..]);
        assert_eq!(check_vmlinux(&vmlinux).unwrap(), info);
        // Linux puts the PVH entry (pvh_start_xen) in the first 4 GiB of the physical layout,
        // above the 1 MiB where x86_64 kernels load.
        assert!(info.pvh_entry >= 0x10_0000);
        assert_eq!((k.pvh_entry, k.load_end), (info.pvh_entry, info.load_end));
        // The last PT_LOAD of Debian's x86-64 kernel ends well above its 16 MiB load address.
        assert!(info.load_end > 0x100_0000 && info.load_end < 0x1_0000_0000, "{:#x}", info.load_end);
        assert!(k.version.ends_with("-amd64"), "{}", k.version);
    }

    /// The test initramfs boots Debian's kernel (its vmlinux, through QEMU's PVH loader) to the
    /// marker and through the whole /init script in QEMU TCG; no hypervisor there, so this shows
    /// the archive, the script and the static programs' error paths, not the tensor path.
    #[test]
    fn the_test_initramfs_boots_debian_kernel_in_qemu() {
        let k = kernel().expect("installing Debian's kernel");
        let cpio = initramfs(InitMode::Test).expect("building the initramfs");
        let out = Command::new("timeout")
            .args(["-k", "5", "120", "qemu-system-x86_64", "-m", "256", "-display", "none", "-serial", "stdio", "-no-reboot"])
            .arg("-kernel")
            .arg(&k.vmlinux)
            .arg("-initrd")
            .arg(&cpio)
            .args(["-append", "console=ttyS0 panic=-1 quiet nokaslr acpi=off nosmp noapic"])
            .stdin(Stdio::null())
            .output()
            .expect("running qemu-system-x86_64");
        let log = String::from_utf8_lossy(&out.stdout);
        let lines: Vec<&str> = log.lines().map(|l| l.trim_end_matches('\r')).collect();
        let at = |m: &str| lines.iter().position(|l| *l == m).unwrap_or_else(|| panic!("no line {m:?} in:\n{log}"));
        assert!(at(INIT_MARKER) < at(DONE_MARKER), "{log}");
        assert!(log.contains("reboot: Restarting system"), "{log}");
        // QEMU's 00:01.0 is its PIIX3 ISA bridge: the static programs ran and refused it.
        let generate = lines.iter().position(|l| l.starts_with("tv-generate: error: the PCI function is 8086:")).unwrap_or_else(|| panic!("{log}"));
        let hostile = at("tv-hostile: user vmcall -> not attempted: no tensorvisor signature in CPUID (VMCALL would be #UD)");
        assert!(at(INIT_MARKER) < generate && generate < hostile && hostile < at(DONE_MARKER), "{log}");
        assert!(lines.iter().any(|l| l.starts_with("tv-hostile: outside window -> not attempted: /sys/bus/pci/devices/0000:00:01.0 is not tensorvisor's function (vendor \"0x8086\"")), "{log}");
        assert!(!log.contains("Kernel panic"), "{log}");
    }
}
