//! Booting images in QEMU or Bochs and judging the run from the serial log.
//!
//! The hypervisor ends every run with a line `tensorvisor: exit success` or `tensorvisor: exit
//! failure` on COM1, then stops the emulator through the device that emulator has (see the
//! hypervisor's `kernel::exit`): QEMU's isa-debug-exit gives status 33 for success and 35 for
//! failure; in Bochs, success hits the magic breakpoint and the debugger command file quits with
//! status 0, failure writes "Shutdown" to port 0x8900 and Bochs exits with status 1. A run counts
//! only when the line and the status agree; a run that ends without the line (a triple fault, a
//! hang until the timeout) has no verdict.

use crate::image::Firmware;
use std::fs;
use std::os::unix::process::ExitStatusExt;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Which emulator runs the image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Emulator {
    /// QEMU with TCG (no VMX) or, with `kvm`, hardware acceleration and the host CPU.
    Qemu { kvm: bool },
    /// Bochs, which emulates VT-x with EPT.
    Bochs,
}

impl Emulator {
    pub fn name(self) -> &'static str {
        match self {
            Emulator::Qemu { kvm: false } => "QEMU (TCG)",
            Emulator::Qemu { kvm: true } => "QEMU (KVM)",
            Emulator::Bochs => "Bochs",
        }
    }

    fn status_for(self, verdict: Verdict) -> Option<i32> {
        match (self, verdict) {
            (Emulator::Qemu { .. }, Verdict::Success) => Some(33),
            (Emulator::Qemu { .. }, Verdict::Failure) => Some(35),
            (Emulator::Bochs, Verdict::Success) => Some(0),
            (Emulator::Bochs, Verdict::Failure) => Some(1),
            _ => None,
        }
    }
}

/// How a run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The hypervisor said `exit success` and the emulator's status agrees.
    Success,
    /// The hypervisor said `exit failure` (a fault, a panic, a failed check) and the status agrees.
    Failure,
    /// The timeout ended the run.
    Timeout,
    /// The emulator stopped without a result line, or with a status that contradicts it.
    NoVerdict,
}

/// Everything one run needs.
#[derive(Clone, Debug)]
pub struct RunSpec {
    pub image: PathBuf,
    pub firmware: Firmware,
    pub emulator: Emulator,
    pub timeout: Duration,
    pub memory_mib: u32,
    pub cpus: u32,
    /// Copy the serial output to this process's stdout as it arrives.
    pub echo: bool,
    /// Start QEMU's gdb stub on :1234 and wait for a debugger.
    pub gdb: bool,
    /// Where the serial log and the emulator's own log are kept.
    pub work_dir: PathBuf,
    /// Extra QEMU arguments (devices such as `-device intel-iommu`, `-drive`, `-device nvme`).
    pub qemu_args: Vec<String>,
    /// Extra bochsrc lines (devices such as `pci: enabled=1, chipset=i440fx, slot1=e1000`).
    pub bochs_lines: Vec<String>,
    /// Bochs only: COM1 is a TCP socket instead of a file, this process's stdin is typed into it
    /// and what it prints is echoed and kept in the serial log (`cargo xtask run --linux`).
    pub console_input: bool,
    /// With `console_input`: instead of stdin, type each `.1` once the serial log shows `.0`,
    /// in order (a scripted session for tests).
    pub console_script: Vec<(String, String)>,
}

impl RunSpec {
    pub fn new(image: PathBuf, firmware: Firmware, emulator: Emulator, work_dir: PathBuf) -> Self {
        Self { image, firmware, emulator, timeout: Duration::from_secs(120), memory_mib: 256, cpus: 1, echo: false, gdb: false, work_dir, qemu_args: Vec::new(), bochs_lines: Vec::new(), console_input: false, console_script: Vec::new() }
    }
}

/// What a run left behind.
#[derive(Clone, Debug)]
pub struct Outcome {
    pub verdict: Verdict,
    /// The emulator's exit status (None when it was killed).
    pub status: Option<i32>,
    /// The signal that ended the emulator, when one did (the harness sends SIGKILL only on a
    /// timeout; any other signal is the emulator's own crash, worth telling apart).
    pub signal: Option<i32>,
    pub serial: String,
    pub elapsed: Duration,
    pub serial_path: PathBuf,
    /// Bochs' own log (it names the exact failing check on a VM-entry failure).
    pub emulator_log: Option<PathBuf>,
    /// Bochs crashed while exiting, after logging this exit code (which `status` then holds).
    pub crashed_after_quit: Option<i32>,
}

pub const SUCCESS_LINE: &str = "tensorvisor: exit success";
pub const FAILURE_LINE: &str = "tensorvisor: exit failure";

impl Outcome {
    /// The last `n` lines of the serial log, for failure messages.
    pub fn tail(&self, n: usize) -> String {
        let lines: Vec<&str> = self.serial.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// A one-paragraph account for test failures: verdict, status, and the log's tail.
    pub fn describe(&self) -> String {
        let mut s = format!(
            "verdict {:?}, emulator status {:?}{}, {:.1} s; serial log {}",
            self.verdict,
            self.status,
            match (self.signal, self.crashed_after_quit) {
                (Some(s), Some(c)) => format!(" (logged quit_sim({c}), then crashed with signal {s})"),
                (Some(s), None) => format!(" (killed by signal {s})"),
                _ => String::new(),
            },
            self.elapsed.as_secs_f64(),
            self.serial_path.display()
        );
        if let Some(log) = &self.emulator_log {
            s.push_str(&format!(", emulator log {}", log.display()));
        }
        s.push_str("\n--- last 40 lines of the serial log ---\n");
        s.push_str(&self.tail(40));
        // What the emulator itself printed (a crash message, a Bochs panic) ends the account.
        let out = self.serial_path.with_file_name("emulator.out");
        if let Ok(text) = fs::read_to_string(&out) {
            let lines: Vec<&str> = text.lines().collect();
            s.push_str(&format!("\n--- last lines of {} ---\n", out.display()));
            s.push_str(&lines[lines.len().saturating_sub(10)..].join("\n"));
        }
        s
    }
}

/// The exit code Bochs logged when it began to quit (`quit_sim called with exit code N`, the
/// last one in its log), if it got that far.
pub fn bochs_quit_code(log: &str) -> Option<i32> {
    const PAT: &str = "quit_sim called with exit code ";
    let line = log.lines().rev().find(|l| l.contains(PAT))?;
    let at = line.find(PAT)? + PAT.len();
    line[at..].trim().parse().ok()
}

/// Reads the verdict from the serial log and the exit status.
pub fn judge(emulator: Emulator, serial: &str, status: Option<i32>, timed_out: bool) -> Verdict {
    if timed_out {
        return Verdict::Timeout;
    }
    let said = if serial.contains(SUCCESS_LINE) {
        Verdict::Success
    } else if serial.contains(FAILURE_LINE) {
        Verdict::Failure
    } else {
        return Verdict::NoVerdict;
    };
    if emulator.status_for(said) == status { said } else { Verdict::NoVerdict }
}

const BOCHSRC: &str = "\
memory: guest=$MEMORY, host=$MEMORY
romimage: file=/usr/share/bochs/BIOS-bochs-latest
vgaromimage: file=/usr/share/vgabios/vgabios.bin
cpu: model=tigerlake, count=$CPUS, ips=50000000, reset_on_triple_fault=0, ignore_bad_msrs=0
display_library: term
ata0-master: type=cdrom, path=$ISO, status=inserted
boot: cdrom
com1: enabled=1, mode=file, dev=$SERIAL
port_e9_hack: enabled=1
magic_break: enabled=1
clock: sync=none, time0=local
log: $BXLOG
panic: action=fatal
error: action=report
info: action=report
debug: action=ignore
speaker: enabled=0
";

fn spawn(spec: &RunSpec, serial: &Path, console_port: Option<u16>) -> Result<(Child, Option<PathBuf>), String> {
    let stdout_log = spec.work_dir.join("emulator.out");
    let out = fs::File::create(&stdout_log).map_err(|e| e.to_string())?;
    let err = out.try_clone().map_err(|e| e.to_string())?;
    match spec.emulator {
        Emulator::Qemu { kvm } => {
            let mut c = Command::new("qemu-system-x86_64");
            c.args(["-machine", "q35", "-display", "none", "-no-reboot", "-monitor", "none"])
                .args(["-m", &format!("{}M", spec.memory_mib), "-smp", &spec.cpus.to_string()])
                .args(["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"])
                .arg("-serial")
                .arg(format!("file:{}", serial.display()))
                .arg("-cdrom")
                .arg(&spec.image);
            if kvm {
                c.args(["-accel", "kvm", "-cpu", "host"]);
            } else {
                c.args(["-accel", "tcg", "-cpu", "max"]);
            }
            if spec.firmware == Firmware::Uefi {
                c.args(["-bios", "/usr/share/OVMF/OVMF_CODE.fd"]);
            }
            if spec.gdb {
                c.args(["-s", "-S"]);
            }
            c.args(&spec.qemu_args);
            let child = c.stdin(Stdio::null()).stdout(out).stderr(err).spawn().map_err(|e| format!("qemu: {e}"))?;
            Ok((child, None))
        }
        Emulator::Bochs => {
            if spec.firmware == Firmware::Uefi {
                return Err("Bochs has no UEFI firmware here: use --emulator qemu for --uefi".into());
            }
            let rc = spec.work_dir.join("bochsrc");
            let mut bochsrc = match console_port {
                Some(port) => BOCHSRC.replace("com1: enabled=1, mode=file, dev=$SERIAL", &format!("com1: enabled=1, mode=socket-server, dev=localhost:{port}")),
                None => String::from(BOCHSRC),
            };
            for line in &spec.bochs_lines {
                bochsrc.push_str(line);
                bochsrc.push('\n');
            }
            fs::write(&rc, bochsrc).map_err(|e| e.to_string())?;
            let dbg = spec.work_dir.join("debugger.rc");
            // At start the debugger continues; at the magic breakpoint (clean exit) it quits.
            fs::write(&dbg, "continue\nquit\n").map_err(|e| e.to_string())?;
            let bxlog = spec.work_dir.join("bochs.log");
            // Bochs' devices write their own files (the e1000's null backend logs what it
            // sends) into the current directory: keep them with the run.
            let child = Command::new("bochs-bin")
                .current_dir(&spec.work_dir)
                .arg("-q")
                .arg("-f")
                .arg(&rc)
                .arg("-rc")
                .arg(&dbg)
                .env("TERM", "dumb")
                .env("ISO", &spec.image)
                .env("SERIAL", serial)
                .env("BXLOG", &bxlog)
                .env("MEMORY", spec.memory_mib.to_string())
                .env("CPUS", spec.cpus.to_string())
                .stdin(Stdio::null())
                .stdout(out)
                .stderr(err)
                .spawn()
                .map_err(|e| format!("bochs: {e}"))?;
            Ok((child, Some(bxlog)))
        }
    }
}

/// Boots `spec.image` and waits for the emulator to stop or the timeout to pass.
pub fn boot(spec: &RunSpec) -> Result<Outcome, String> {
    fs::create_dir_all(&spec.work_dir).map_err(|e| format!("{}: {e}", spec.work_dir.display()))?;
    let serial_path = spec.work_dir.join("serial.log");
    fs::write(&serial_path, b"").map_err(|e| e.to_string())?;
    let start = Instant::now();
    let console_port = if spec.console_input && spec.emulator == Emulator::Bochs {
        let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| format!("a port for COM1: {e}"))?;
        Some(l.local_addr().map_err(|e| e.to_string())?.port())
    } else {
        None
    };
    let (mut child, emulator_log) = spawn(spec, &serial_path, console_port)?;
    let mut console = match console_port {
        Some(port) => Some(connect_console(port, &mut child, spec.console_script.is_empty())?),
        None => None,
    };
    let mut echoed = 0u64;
    let mut timed_out = false;
    let mut script = spec.console_script.iter().peekable();
    let exit = loop {
        if let Some(c) = console.as_mut() {
            pump_console(c, &serial_path);
            if let Some((wait, send)) = script.peek() {
                let log = fs::read(&serial_path).unwrap_or_default();
                if String::from_utf8_lossy(&log).contains(wait.as_str()) {
                    let bytes: Vec<u8> = send.bytes().map(|b| if b == b'\n' { b'\r' } else { b }).collect();
                    let _ = c.set_nonblocking(false);
                    let _ = c.write_all(&bytes);
                    let _ = c.set_nonblocking(true);
                    script.next();
                }
            }
        } else if spec.echo {
            echoed = echo_new(&serial_path, echoed);
        }
        match child.try_wait().map_err(|e| e.to_string())? {
            Some(status) => break status,
            None if start.elapsed() > spec.timeout => {
                timed_out = true;
                let _ = child.kill();
                match child.wait() {
                    Ok(status) => break status,
                    Err(e) => return Err(format!("waiting for the killed emulator: {e}")),
                }
            }
            None => std::thread::sleep(Duration::from_millis(50)),
        }
    };
    if let Some(c) = console.as_mut() {
        pump_console(c, &serial_path);
    } else if spec.echo {
        echo_new(&serial_path, echoed);
    }
    let serial = String::from_utf8_lossy(&fs::read(&serial_path).unwrap_or_default()).replace('\r', "");
    let (signal, mut status) = (exit.signal(), exit.code());
    // Bochs 2.7 sometimes crashes (SIGSEGV) while tearing down, after it decided and logged its
    // exit code: that logged code is then the run's status (the crash is still reported).
    let mut crashed_after_quit = None;
    if status.is_none() && !timed_out && spec.emulator == Emulator::Bochs {
        if let Some(code) = emulator_log.as_ref().and_then(|p| fs::read_to_string(p).ok()).and_then(|l| bochs_quit_code(&l)) {
            eprintln!("bochs crashed (signal {signal:?}) while exiting after quit_sim({code}); taking {code} as its status");
            status = Some(code);
            crashed_after_quit = Some(code);
        }
    }
    let verdict = judge(spec.emulator, &serial, status, timed_out);
    Ok(Outcome { verdict, status, signal, serial, elapsed: start.elapsed(), serial_path, emulator_log, crashed_after_quit })
}

/// Connects to Bochs' COM1 socket (Bochs listens once it has started) and starts copying this
/// process's stdin into it.
fn connect_console(port: u16, child: &mut Child, from_stdin: bool) -> Result<std::net::TcpStream, String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match std::net::TcpStream::connect(("127.0.0.1", port)) {
            Ok(s) => {
                s.set_nonblocking(true).map_err(|e| e.to_string())?;
                let mut to_uart = s.try_clone().map_err(|e| e.to_string())?;
                if !from_stdin {
                    return Ok(s);
                }
                std::thread::spawn(move || {
                    let mut stdin = std::io::stdin().lock();
                    let mut buf = [0u8; 256];
                    while let Ok(n) = stdin.read(&mut buf) {
                        if n == 0 {
                            break;
                        }
                        // Terminals send CR+LF or LF; a serial console expects CR for Enter.
                        let bytes: Vec<u8> = buf[..n].iter().map(|&b| if b == b'\n' { b'\r' } else { b }).collect();
                        let mut sent = 0;
                        while sent < bytes.len() {
                            match to_uart.write(&bytes[sent..]) {
                                Ok(k) => sent += k,
                                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(5)),
                                Err(_) => return,
                            }
                        }
                    }
                });
                return Ok(s);
            }
            Err(e) => {
                if child.try_wait().ok().flatten().is_some() || Instant::now() > deadline {
                    return Err(format!("Bochs' COM1 socket on port {port}: {e}"));
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// Copies what COM1 printed to stdout and the serial log.
fn pump_console(c: &mut std::net::TcpStream, serial: &Path) {
    let mut buf = [0u8; 4096];
    loop {
        match c.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                let mut stdout = std::io::stdout();
                let _ = stdout.write_all(&buf[..n]);
                let _ = stdout.flush();
                if let Ok(mut f) = fs::OpenOptions::new().append(true).open(serial) {
                    let _ = f.write_all(&buf[..n]);
                }
            }
            Err(_) => return,
        }
    }
}

/// Copies what the serial log gained since `from` to stdout; returns the new position.
fn echo_new(path: &Path, from: u64) -> u64 {
    let Ok(mut f) = fs::File::open(path) else { return from };
    if f.seek(SeekFrom::Start(from)).is_err() {
        return from;
    }
    let mut buf = Vec::new();
    let n = f.read_to_end(&mut buf).unwrap_or(0);
    let text = String::from_utf8_lossy(&buf).replace('\r', "");
    let mut stdout = std::io::stdout();
    let _ = stdout.write_all(text.as_bytes());
    let _ = stdout.flush();
    from + n as u64
}

/// Whether QEMU can run this machine's guests with KVM *and* those guests can use VMX (nested
/// virtualisation), and why not if not.
pub fn kvm_with_nested_vmx() -> Result<(), String> {
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let flags = cpuinfo.lines().find(|l| l.starts_with("flags")).unwrap_or("");
    if !flags.split_whitespace().any(|f| f == "vmx") {
        return Err("this CPU shows no vmx flag (no hardware virtualization here)".into());
    }
    if let Err(e) = fs::OpenOptions::new().read(true).write(true).open("/dev/kvm") {
        return Err(format!("/dev/kvm cannot be opened ({e})"));
    }
    let nested = fs::read_to_string("/sys/module/kvm_intel/parameters/nested").unwrap_or_default();
    if !matches!(nested.trim(), "Y" | "1") {
        return Err("kvm_intel's nested virtualization is off (/sys/module/kvm_intel/parameters/nested)".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdict_needs_line_and_matching_status() {
        let ok = format!("banner\n{SUCCESS_LINE}\n");
        let bad = format!("fault\n{FAILURE_LINE}\n");
        let qemu = Emulator::Qemu { kvm: false };
        assert_eq!(judge(qemu, &ok, Some(33), false), Verdict::Success);
        assert_eq!(judge(qemu, &bad, Some(35), false), Verdict::Failure);
        assert_eq!(judge(Emulator::Bochs, &ok, Some(0), false), Verdict::Success);
        assert_eq!(judge(Emulator::Bochs, &bad, Some(1), false), Verdict::Failure);
        // A line contradicted by the status, a missing line, and a timeout.
        assert_eq!(judge(qemu, &ok, Some(35), false), Verdict::NoVerdict);
        assert_eq!(judge(Emulator::Bochs, &ok, Some(1), false), Verdict::NoVerdict);
        assert_eq!(judge(qemu, "banner only\n", Some(0), false), Verdict::NoVerdict);
        assert_eq!(judge(qemu, &ok, None, true), Verdict::Timeout);
    }

    #[test]
    fn bochs_quit_code_is_the_last_logged_one() {
        let log = "00000363694i[BIOS  ] Shutdown flag 0\n00279465181i[SIM   ] quit_sim called with exit code 1\n";
        assert_eq!(bochs_quit_code(log), Some(1));
        let log = "x quit_sim called with exit code 0\ny\n00295194179i[SIM   ] quit_sim called with exit code 1\n";
        assert_eq!(bochs_quit_code(log), Some(1));
        assert_eq!(bochs_quit_code("00000363694i[BIOS  ] Shutdown flag 0\n"), None);
        assert_eq!(bochs_quit_code("quit_sim called with exit code x\n"), None);
    }
}
