//! `tv-generate`: the `infer` guest's job from Linux user space. Maps the tensorvisor PCI
//! function through sysfs, finds the model by name, opens a session and generates; prints
//! `tv-generate: tokens=<ids>`. Arguments: see the crate documentation (argv `key=value`, or
//! `tv.key=value` on the kernel command line). Exit status 0 on success, 1 on any error (the
//! error is printed as `tv-generate: error: ...`).

use guest_sdk::linux::LinuxTransport;
use guest_sdk::tensor::{abi_info, model_info, Sampling, Session};
use linux_guest::{ids, Args};
use std::process::ExitCode;
use tensor_hcall::desc::RegionFlags;

fn run() -> Result<(), String> {
    let args = Args::from_env()?;
    let mut t = LinuxTransport::open().map_err(|e| e.to_string())?;
    let (base, len) = t.window();
    let hv = guest_sdk::detect(&mut t).map(|i| format!("tensorvisor ABI {}.{}", i.version.major, i.version.minor)).unwrap_or_else(|| "no hypervisor signature in CPUID".into());
    println!("tv-generate: window {base:#x}+{len:#x}, {hv}");
    let abi = abi_info(&mut t).map_err(|e| format!("Query(ABI): {e:?}"))?;
    let mut model = None;
    for i in 0..u64::from(abi.models) {
        let m = model_info(&mut t, i).map_err(|e| format!("Query(model {i}): {e:?}"))?;
        let n = m.name.iter().position(|&b| b == 0).unwrap_or(m.name.len());
        if m.name[..n] == *args.model.as_bytes() {
            model = Some(m);
        }
    }
    let model = model.ok_or_else(|| format!("no model named {:?} among the tenant's {} model(s)", args.model, abi.models))?;
    let io = t.region(4096, RegionFlags::READ | RegionFlags::WRITE).map_err(|e| format!("RegisterMemory: {e:?}"))?;
    let ctx = (args.prompt.len() as u64 + u64::from(args.max_tokens) + 1).max(16);
    let session = Session::open(&mut t, model.id, ctx).map_err(|e| format!("SessionOpen: {e:?}"))?;
    let sampling = Sampling { temperature: args.temperature, seed: args.seed, ..Sampling::default() };
    let tokens = if args.temperature == 0.0 {
        // Greedy: the SDK's streaming `Session::generate`, one call per token.
        let mut out = Vec::new();
        session.generate(&mut t, &io, &args.prompt, args.max_tokens, &sampling, |tok| out.push(tok)).map_err(|e| format!("generate: {e:?}"))?;
        out
    } else {
        // Sampling: one call for all tokens, so one seeded stream, exactly as the `infer` guest
        // and the host engine sample.
        session.prefill(&mut t, &io, 0, &args.prompt).map_err(|e| format!("SessionPrefill: {e:?}"))?;
        let n = session.generate_into(&mut t, &io, 0, args.max_tokens, &sampling).map_err(|e| format!("SessionGenerate: {e:?}"))?;
        let mut out = vec![0u32; n as usize];
        io.read_u32s(0, &mut out).map_err(|e| format!("reading tokens: {e:?}"))?;
        out
    };
    session.close(&mut t).map_err(|e| format!("SessionClose: {e:?}"))?;
    println!("tv-generate: model \"{}\", prompt {} tokens, generated {}", args.model, args.prompt.len(), tokens.len());
    println!("tv-generate: tokens={}", ids(&tokens));
    if t.sequence_errors != 0 {
        return Err(format!("{} hypercall(s) not answered by the page", t.sequence_errors));
    }
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            println!("tv-generate: error: {e}");
            ExitCode::FAILURE
        }
    }
}
