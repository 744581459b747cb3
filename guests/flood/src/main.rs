//! The flood guest: keeps the engine busy with long generations, back to back: `rounds=` times
//! it opens a session of `context=` tokens, prefills token 2 and generates `max_tokens=` tokens
//! greedily in one call, then closes the session. It prints one line per round, so a test can
//! see it was still flooding while another tenant finished.
#![no_std]
#![no_main]

use guest_sdk::arch::Vmcall;
use guest_sdk::console::exit;
use guest_sdk::tensor::{Sampling, Session, SharedRegion};
use guest_sdk::{println, GuestBootInfo};
use tensor_hcall::desc::RegionFlags;

/// The guest-physical area shared with the engine (inside its RAM, above the image, below the
/// stack): the prompt at 0, the generated tokens from 0x400.
const IO_GPA: u64 = 0x30_0000;
const IO_LEN: u64 = 0x4000;

fn run(boot: &GuestBootInfo) -> Result<(), tensor_hcall::HcallError> {
    let mut t = Vmcall::new();
    let rounds: u32 = boot.arg("rounds").and_then(|v| v.parse().ok()).unwrap_or(4);
    let max_tokens: u32 = boot.arg("max_tokens").and_then(|v| v.parse().ok()).unwrap_or(100);
    let context: u64 = boot.arg("context").and_then(|v| v.parse().ok()).unwrap_or(128);
    // SAFETY: [IO_GPA, IO_GPA + IO_LEN) is this guest's RAM and nothing else uses it.
    let io = unsafe { SharedRegion::register(&mut t, IO_GPA, IO_LEN, RegionFlags::READ | RegionFlags::WRITE)? };
    for round in 0..rounds {
        let session = Session::open(&mut t, 0, context)?;
        session.prefill(&mut t, &io, 0, &[2])?;
        let got = session.generate_into(&mut t, &io, 0x400, max_tokens, &Sampling::default())?;
        session.close(&mut t)?;
        println!("flood: round {round}: generated {got} tokens");
    }
    println!("flood: done");
    Ok(())
}

#[unsafe(no_mangle)]
#[unsafe(link_section = ".text._start")]
extern "C" fn _start(boot: &'static GuestBootInfo) -> ! {
    match run(boot) {
        Ok(()) => exit(0),
        Err(e) => {
            println!("flood: failed: {e:?}");
            exit(1)
        }
    }
}
