//! `cargo xtask bench hypercall`: the cost of a null VMCALL round trip, measured in Bochs.
//!
//! The bench guest first times a baseline loop of 1,000,000 iterations of two register-only
//! instructions, then `--count` hypercalls with a number no call uses (the hypervisor decodes it
//! and answers NotSupported: the shortest complete trip through the exit path). Bochs advances
//! the TSC once per emulated instruction, which the baseline shows (2.0 ticks per iteration), so
//! TSC ticks per round trip are emulated instructions per round trip: the guest's VMCALL and
//! loop, the VM exit, the hypervisor's exit path and the VM entry. Wall-clock exits per second
//! come from when the start and end lines reach the serial log. Prints one JSON object.

use crate::emulator::{self, Emulator, RunSpec, Verdict};
use crate::image::{self, Firmware, ImageSpec};
use std::time::{Duration, Instant};

fn number_after(line: &str, key: &str) -> Option<u64> {
    line.split(key).nth(1)?.split_whitespace().next()?.trim_end_matches(':').parse().ok()
}

pub fn run(args: &[String]) -> Result<(), String> {
    let mut count: u64 = 200_000;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--count" => count = it.next().and_then(|c| c.parse().ok()).ok_or("--count takes a number")?,
            other => return Err(format!("unknown option `{other}` (bench hypercall takes --count N)")),
        }
    }
    crate::setup::ensure()?;
    let bench = image::guest_elf("bench")?;
    let iso = image::make_image(&ImageSpec::new("bench-hypercall", Firmware::Bios).module(bench, &format!("guest:bench count={count} budget_ms=600000")))?;
    let mut spec = RunSpec::new(iso, Firmware::Bios, Emulator::Bochs, image::build_dir().join("bench-hypercall"));
    spec.timeout = Duration::from_secs(600);
    // Watch the serial log for the start and end lines to time the hypercall loop in wall time.
    let serial = spec.work_dir.join("serial.log");
    let watcher = std::thread::spawn(move || {
        let (mut start, mut end) = (None, None);
        let t0 = Instant::now();
        while end.is_none() && t0.elapsed() < Duration::from_secs(600) {
            let text = std::fs::read_to_string(&serial).unwrap_or_default();
            if start.is_none() && text.contains("bench: start") {
                start = Some(Instant::now());
            }
            if text.contains("bench: end") {
                end = Some(Instant::now());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        start.zip(end).map(|(s, e)| e - s)
    });
    let outcome = emulator::boot(&spec)?;
    let wall = watcher.join().map_err(|_| "watcher thread failed")?;
    if outcome.verdict != Verdict::Success {
        return Err(format!("the benchmark run failed\n{}", outcome.describe()));
    }
    let line = |key: &str| outcome.serial.lines().find(|l| l.contains(key)).map(str::to_string);
    let base_line = line("bench: baseline").ok_or("no baseline line")?;
    let end_line = line("bench: end").ok_or("no end line")?;
    let base_ticks = number_after(&base_line, "instructions: ").ok_or("unreadable baseline")?;
    let ticks = number_after(&end_line, "null hypercalls: ").ok_or("unreadable end line")?;
    let ticks_per_instruction = base_ticks as f64 / 2_000_000.0;
    let instructions_per_round_trip = ticks as f64 / count as f64 / ticks_per_instruction;
    let wall_s = wall.map(|d| d.as_secs_f64());
    let exits_per_s = wall_s.map(|s| count as f64 / s);
    // The baseline in wall time: the emulator's plain instruction rate over the whole run.
    let plain_instructions_per_s = wall_s.map(|s| ticks as f64 / ticks_per_instruction / s);
    println!(
        "{{\"bench\":\"hypercall\",\"emulator\":\"bochs\",\"round_trips\":{count},\
         \"baseline_tsc_ticks_per_instruction\":{ticks_per_instruction:.3},\
         \"instructions_per_round_trip\":{instructions_per_round_trip:.1},\
         \"wall_seconds\":{},\"exits_per_second\":{},\"emulated_instructions_per_second\":{},\
         \"round_trip_cost_vs_plain_instruction\":{instructions_per_round_trip:.1}}}",
        wall_s.map_or("null".into(), |s| format!("{s:.3}")),
        exits_per_s.map_or("null".into(), |v| format!("{v:.0}")),
        plain_instructions_per_s.map_or("null".into(), |v| format!("{v:.0}")),
    );
    Ok(())
}
