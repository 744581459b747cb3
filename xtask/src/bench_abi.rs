//! `cargo xtask bench abi`: what batching buys, measured in one Bochs boot. Two copies of the
//! tensors guest submit the same 64 operations, one with a single doorbell (batched) and one
//! with a doorbell per operation (the baseline). Bochs' TSC counts emulated instructions, so the
//! guests' TSC ticks over the submit phase are instructions (guest, exits and hypervisor
//! together). The hypervisor's per-tenant counters give the descriptor bytes the doorbells
//! copied (tensor data is never copied). Prints one JSON object with the ratios.

use crate::emulator::{self, Emulator, RunSpec, Verdict};
use crate::image::{self, Firmware, ImageSpec};
use std::time::Duration;

fn number_after(line: &str, key: &str) -> Option<u64> {
    line.split(key).nth(1)?.split(|c: char| !c.is_ascii_digit()).find(|s| !s.is_empty())?.parse().ok()
}

pub fn run(args: &[String]) -> Result<(), String> {
    if let Some(a) = args.first() {
        return Err(format!("bench abi takes no options (got `{a}`)"));
    }
    crate::setup::ensure()?;
    let guest = image::guest_elf("tensors")?;
    let iso = image::make_image(
        &ImageSpec::new("bench-abi", Firmware::Bios)
            .module(&guest, "guest:batched")
            .module(&guest, "guest:unbatched unbatched=1"),
    )?;
    let mut spec = RunSpec::new(iso, Firmware::Bios, Emulator::Bochs, image::build_dir().join("bench-abi"));
    spec.timeout = Duration::from_secs(300);
    let out = emulator::boot(&spec)?;
    if out.verdict != Verdict::Success {
        return Err(format!("the benchmark run failed\n{}", out.describe()));
    }
    let find = |guest: &str, key: &str| {
        out.serial.lines().find(|l| l.contains(&format!("[{guest}]")) && l.contains(key) || l.contains(&format!("guest {guest}: ")) && l.contains(key)).map(str::to_string)
    };
    let mut fields = Vec::new();
    let mut per_op_instr = [0f64; 2];
    for (i, g) in ["batched", "unbatched"].iter().enumerate() {
        let submit = find(g, "submit phase").ok_or(format!("no submit line for {g}"))?;
        let doorbells = number_after(&submit, "submit phase: ").ok_or("unreadable doorbells")?;
        let ticks = number_after(&submit, "ops, ").ok_or("unreadable ticks")?;
        let exact = find(g, "results bit-exact").ok_or(format!("no result line for {g}"))?;
        if !exact.contains("64 of 64") {
            return Err(format!("{g}: results not bit-exact: {exact}"));
        }
        let stats = find(g, "descriptor bytes copied").ok_or(format!("no stats for {g}"))?;
        let doorbell_bytes = number_after(&stats, "copied (").ok_or("unreadable doorbell bytes")?;
        per_op_instr[i] = ticks as f64 / 64.0;
        fields.push(format!(
            "\"{g}\":{{\"ops\":64,\"doorbell_exits\":{doorbells},\"exits_per_op\":{:.4},\"instructions_per_op\":{:.0},\"descriptor_bytes_per_op\":{:.1}}}",
            doorbells as f64 / 64.0,
            per_op_instr[i],
            doorbell_bytes as f64 / 64.0
        ));
    }
    println!(
        "{{\"bench\":\"abi\",\"emulator\":\"bochs\",{},\"unbatched_over_batched_instructions\":{:.2}}}",
        fields.join(","),
        per_op_instr[1] / per_op_instr[0]
    );
    Ok(())
}
