//! The infer guest: finds a model through `Query`, opens a session, prefills the prompt tokens
//! from its arguments (`prompt=ID,ID,..`) and generates `max_tokens` tokens in one call with the
//! sampling its arguments give (`temp=`, `seed=`), then prints them.
#![no_std]
#![no_main]

use guest_sdk::arch::{self, Vmcall};
use guest_sdk::console::{exit, Console};
use guest_sdk::tensor::{abi_info, model_info, Sampling, Session, SharedRegion};
use guest_sdk::{println, GuestBootInfo};
use tensor_hcall::desc::RegionFlags;

/// The guest-physical area this guest shares with the engine (inside its 4 MiB, above the image,
/// below the stack).
const IO_GPA: u64 = 0x30_0000;
const IO_LEN: u64 = 0x1000;

/// Its vector registers: the initial state at its first instruction, then its own pattern,
/// checked after each call (the engine and other tenants ran on its CPU meanwhile) for change
/// and for the hostile guest's marks.
struct VectorWatch {
    want: arch::Vectors,
    ymm: bool,
    checks: u32,
    changed: u32,
    foreign: usize,
}

impl VectorWatch {
    fn start() -> Self {
        // SAFETY: ring 0, and this guest is soft-float: it keeps nothing of its own there.
        let ymm = unsafe { arch::enable_vectors() };
        // SAFETY: enabled just above.
        let first = unsafe { arch::read_vectors(ymm) };
        let nonzero = first.iter().flatten().filter(|&&l| l != 0).count();
        let foreign = arch::lanes_tagged(&first, arch::TAG_HOSTILE);
        println!(
            "infer: vector registers at start: {}",
            if nonzero == 0 { "initial state (all zero)" } else { "NOT the initial state" }
        );
        let want = arch::vector_pattern(arch::TAG_INFER, ymm);
        // SAFETY: as above.
        unsafe { arch::load_vectors(&want, ymm) };
        Self { want, ymm, checks: 1, changed: u32::from(nonzero != 0), foreign }
    }

    fn check(&mut self) {
        // SAFETY: enabled in `start`.
        let got = unsafe { arch::read_vectors(self.ymm) };
        self.checks += 1;
        self.foreign += arch::lanes_tagged(&got, arch::TAG_HOSTILE);
        if got != self.want {
            self.changed += 1;
            // SAFETY: as above.
            unsafe { arch::load_vectors(&self.want, self.ymm) };
        }
    }
}

fn run(boot: &GuestBootInfo) -> Result<(), tensor_hcall::HcallError> {
    let mut vectors = VectorWatch::start();
    let r = run_calls(boot, &mut vectors);
    vectors.check();
    println!(
        "infer: vector registers ({}): {} reads, another tenant's pattern seen in {} lane(s), changed under it {} time(s) -> {}",
        if vectors.ymm { "YMM0-15" } else { "XMM0-15" },
        vectors.checks,
        vectors.foreign,
        vectors.changed,
        if vectors.foreign == 0 && vectors.changed == 0 { "isolated" } else { "WRONG" }
    );
    r
}

fn run_calls(boot: &GuestBootInfo, vectors: &mut VectorWatch) -> Result<(), tensor_hcall::HcallError> {
    let mut t = Vmcall::new();
    let abi = abi_info(&mut t)?;
    vectors.check();
    println!("infer: ABI {:#x}, {} model(s), in-flight quota {}", abi.abi_version, abi.models, abi.max_inflight);
    let model = model_info(&mut t, 0)?;
    vectors.check();
    let name_len = model.name.iter().position(|&b| b == 0).unwrap_or(model.name.len());
    println!(
        "infer: model 0 \"{}\", vocab {}, context {}",
        core::str::from_utf8(&model.name[..name_len]).unwrap_or("?"),
        model.vocab_size,
        model.context_len
    );
    let mut prompt = [0u32; 64];
    let mut n = 0;
    for id in boot.arg("prompt").unwrap_or("2").split(',') {
        if n < prompt.len() {
            prompt[n] = id.parse().unwrap_or(0);
            n += 1;
        }
    }
    let max_tokens: u32 = boot.arg("max_tokens").and_then(|v| v.parse().ok()).unwrap_or(8);
    let sampling = Sampling {
        temperature: boot.arg("temp").and_then(|v| v.parse().ok()).unwrap_or(0.0),
        seed: boot.arg("seed").and_then(|v| v.parse().ok()).unwrap_or(0),
        ..Sampling::default()
    };
    // SAFETY: [IO_GPA, IO_GPA + IO_LEN) is this guest's RAM and nothing else uses it.
    let io = unsafe { SharedRegion::register(&mut t, IO_GPA, IO_LEN, RegionFlags::READ | RegionFlags::WRITE)? };
    let session = Session::open(&mut t, model.id, 128)?;
    vectors.check();
    session.prefill(&mut t, &io, 0, &prompt[..n])?;
    vectors.check();
    let got = session.generate_into(&mut t, &io, 0x400, max_tokens, &sampling)?;
    vectors.check();
    let mut out = [0u32; 64];
    let got = (got as usize).min(out.len());
    io.read_u32s(0x400, &mut out[..got])?;
    println!("infer: prompt {} tokens, generated {got}", n);
    // The hypervisor buffers console output until the newline, so the line goes out in pieces.
    {
        use core::fmt::Write;
        let mut c = Console::new(&mut t);
        let _ = write!(c, "infer: tokens [");
        for (i, tok) in out[..got].iter().enumerate() {
            let _ = write!(c, "{}{tok}", if i > 0 { "," } else { "" });
        }
        let _ = writeln!(c, "]");
    }
    session.close(&mut t)?;
    Ok(())
}

#[unsafe(no_mangle)]
#[unsafe(link_section = ".text._start")]
extern "C" fn _start(boot: &'static GuestBootInfo) -> ! {
    match run(boot) {
        Ok(()) => exit(0),
        Err(e) => {
            println!("infer: failed: {e:?}");
            exit(1)
        }
    }
}
