//! `tv-hostile`: what a Linux program must not get away with, each probe in a child process so
//! a fault kills the probe, not this program (and never the kernel). Prints one line each:
//! - `tv-hostile: user vmcall -> <result>`: a tensor hypercall by VMCALL from user mode (CPL 3);
//!   without the tenant's `user_mode_hypercalls` policy the documented answer is
//!   `PermissionDenied`;
//! - `tv-hostile: outside window -> <results>`: mapping `resource1` past its end, reading one
//!   byte past the window's mapping, and reading the guest-physical page just past the window
//!   through `/dev/mem`.
//!
//! Exit status 0 when every probe ran (whatever it found: the test judges the lines), 1 when one
//! could not be run.

use guest_sdk::arch::Vmcall;
use guest_sdk::linux::{parse_resources, SYSFS_DEVICE};
use std::os::fd::AsRawFd;
use std::process::ExitCode;
use tensor_hcall::linux::{PCI_DEVICE_ID, PCI_VENDOR_ID};
use tensor_hcall::Hypercall;

/// Runs `probe` in a child; returns what it reported (its exit code, through `describe`) or the
/// signal that killed it.
fn in_child(probe: impl FnOnce() -> i32, describe: impl Fn(i32) -> String) -> String {
    use std::io::Write;
    let _ = std::io::stdout().flush();
    // SAFETY: this program is single-threaded; the child only runs `probe` and `_exit`s.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return format!("fork failed: {}", std::io::Error::last_os_error());
    }
    if pid == 0 {
        let code = probe();
        // SAFETY: ends the child without running the parent's exit handlers twice.
        unsafe { libc::_exit(code) };
    }
    let mut status = 0;
    // SAFETY: waits for the child just forked.
    if unsafe { libc::waitpid(pid, &mut status, 0) } != pid {
        return format!("waitpid failed: {}", std::io::Error::last_os_error());
    }
    if libc::WIFSIGNALED(status) {
        let sig = libc::WTERMSIG(status);
        let name = match sig {
            libc::SIGSEGV => "SIGSEGV",
            libc::SIGBUS => "SIGBUS",
            libc::SIGILL => "SIGILL",
            _ => "signal",
        };
        format!("killed by {name} ({sig})")
    } else {
        describe(libc::WEXITSTATUS(status))
    }
}

/// Error codes of the user VMCALL probe travel in the exit status: 100 + |HcallError|, 99 for
/// success.
fn user_vmcall() -> String {
    let mut t = Vmcall::new();
    if guest_sdk::detect(&mut t).is_none() {
        return "not attempted: no tensorvisor signature in CPUID (VMCALL would be #UD)".into();
    }
    in_child(
        || {
            // A call that is harmless when allowed (an unknown session: BadHandle).
            match guest_sdk::call(&mut Vmcall::new(), Hypercall::SessionClose { session: u64::MAX }) {
                Ok(_) => 99,
                Err(e) => 100 + (-(e as i64)).min(150) as i32,
            }
        },
        |code| match code {
            99 => "Ok (the call ran: user-mode hypercalls are allowed)".into(),
            c if c > 100 => tensor_hcall::HcallError::ALL
                .iter()
                .find(|e| -(**e as i64) == i64::from(c - 100))
                .map(|e| format!("{e:?}"))
                .unwrap_or_else(|| format!("error code -{}", c - 100)),
            c => format!("exit status {c}"),
        },
    )
}

fn mmap(fd: i32, len: usize, offset: i64, addr: *mut libc::c_void, flags: i32) -> Result<*mut u8, std::io::Error> {
    // SAFETY: a shared mapping of a device file; callers touch it only in probe children.
    let p = unsafe { libc::mmap(addr, len, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_SHARED | flags, fd, offset) };
    if p == libc::MAP_FAILED { Err(std::io::Error::last_os_error()) } else { Ok(p.cast()) }
}

fn outside_window() -> Result<String, String> {
    let dir = std::path::Path::new(SYSFS_DEVICE);
    let id = |f: &str| std::fs::read_to_string(dir.join(f)).map(|s| s.trim().to_string()).unwrap_or_default();
    if (id("vendor"), id("device")) != (format!("{:#06x}", PCI_VENDOR_ID), format!("{:#06x}", PCI_DEVICE_ID)) {
        return Err(format!("not attempted: {SYSFS_DEVICE} is not tensorvisor's function (vendor {:?}, device {:?})", id("vendor"), id("device")));
    }
    let text = std::fs::read_to_string(dir.join("resource")).map_err(|e| format!("not attempted: {SYSFS_DEVICE}/resource: {e}"))?;
    let (_, window) = parse_resources(&text).map_err(|e| format!("not attempted: {e}"))?;
    let len = window.size as usize;
    let f = std::fs::OpenOptions::new().read(true).write(true).open(dir.join("resource1")).map_err(|e| format!("not attempted: resource1: {e}"))?;

    // 1. Map one page more than the BAR: the kernel must refuse.
    let past_end = match mmap(f.as_raw_fd(), len + 4096, 0, core::ptr::null_mut(), 0) {
        Ok(_) => "mapped (!)".to_string(),
        Err(e) => format!("refused ({})", e.raw_os_error().map_or("?".into(), errno_name)),
    };

    // 2. Map the window with an inaccessible page reserved right behind it; read one byte past
    //    the end: the process must take the fault.
    // SAFETY: reserves fresh address space; nothing aliases it.
    let resv = unsafe { libc::mmap(core::ptr::null_mut(), len + 4096, libc::PROT_NONE, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1, 0) };
    if resv == libc::MAP_FAILED {
        return Err(format!("not attempted: reserving address space: {}", std::io::Error::last_os_error()));
    }
    let p = mmap(f.as_raw_fd(), len, 0, resv, libc::MAP_FIXED).map_err(|e| format!("not attempted: mapping resource1: {e}"))?;
    let past_mapping = in_child(
        || {
            // SAFETY: deliberately not safe: the byte after the mapping; the child takes the fault.
            let v = unsafe { core::ptr::read_volatile(p.add(len)) };
            i32::from(v) & 1
        },
        |c| format!("read returned (exit {c}) (!)"),
    );

    // 3. The guest-physical page right after the window, through /dev/mem.
    let gpa = window.start + window.size;
    let devmem = match std::fs::OpenOptions::new().read(true).write(true).open("/dev/mem") {
        Err(e) => format!("open refused ({e})"),
        Ok(mem) => match mmap(mem.as_raw_fd(), 4096, gpa as i64, core::ptr::null_mut(), 0) {
            Err(e) => format!("mmap refused ({})", e.raw_os_error().map_or("?".into(), errno_name)),
            Ok(q) => in_child(
                || {
                    // SAFETY: deliberately reads memory outside the window; a fault kills this child.
                    let v = unsafe { core::ptr::read_volatile(q.cast::<u64>()) };
                    if v == u64::MAX { 3 } else if v == 0 { 2 } else { 4 }
                },
                |c| match c {
                    3 => "read all-ones".into(),
                    2 => "read zeros".into(),
                    _ => "read data (!)".into(),
                },
            ),
        },
    };
    Ok(format!("mmap past end: {past_end}; read past mapping: {past_mapping}; /dev/mem {gpa:#x}: {devmem}"))
}

fn errno_name(e: i32) -> String {
    match e {
        libc::EINVAL => "EINVAL".into(),
        libc::EPERM => "EPERM".into(),
        libc::EACCES => "EACCES".into(),
        libc::ENXIO => "ENXIO".into(),
        e => format!("errno {e}"),
    }
}

fn main() -> ExitCode {
    let vmcall = user_vmcall();
    println!("tv-hostile: user vmcall -> {vmcall}");
    let outside = outside_window();
    let ok = outside.is_ok() && !vmcall.starts_with("not attempted");
    println!("tv-hostile: outside window -> {}", outside.unwrap_or_else(|e| e));
    if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}
