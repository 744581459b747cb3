//! `cargo xtask bench tenants`: what several tenants on one box cost and get, as one JSON object.
//!
//! - `shares`: **measured on the real request path** (on the host): tenants of weights 1:2:4
//!   make hypercalls through the hypervisor's dispatcher (`hypervisor::dispatch::Tenant`), engine
//!   calls park as requests and their units (one ring operation each) are picked by the
//!   hypervisor's scheduler (`hypervisor::sched::fair`, deficit round robin with measured costs),
//!   in the loop `hypervisor::sched::harness` shapes like the hypervisor's run loop; 10,000
//!   units, each tenant's share of the charged cost against its weight share.
//! - `flood`: the same path with the tiny model: two flooders of weight 4 (300-token generations
//!   and 64-operation doorbells, forever) and an honest tenant of weight 1 generating 12 tokens
//!   twice; what each honest request waited, in cost of other tenants' units, against the bound.
//! - `memory`: **measured in Bochs**, from the hypervisor's own accounting: 1, 2 and 4 `infer`
//!   tenants on the tiny model, booted; the model file is one boot module (its frames, counted
//!   once, shared read-only), the hypervisor logs the frames the tenants took (guest RAM, EPT
//!   tables), the heap before them (kernel and model structures) and the heap's peak while they
//!   ran (sessions' KV caches). `total_if_weights_per_tenant_bytes` adds the model file once
//!   more per extra tenant, what private copies would cost.
//! - `simulation`: the DRR simulation (`hypervisor::sched::sim`) kept for comparison.

use crate::emulator::{self, Emulator, RunSpec, Verdict};
use crate::image::{self, Firmware, ImageSpec};
use hypervisor::dispatch::Limits;
use hypervisor::sched::harness::{Host, Phase, Script};
use hypervisor::sched::sim;
use std::time::Duration;

fn f(x: f64) -> String {
    format!("{x:.5}")
}

fn number_after(text: &str, key: &str) -> Result<u64, String> {
    let line = text.lines().find(|l| l.contains(key)).ok_or(format!("no line with `{key}`"))?;
    line.split(key).nth(1).and_then(|r| r.split_whitespace().next()).and_then(|w| w.trim_matches(|c| c == '(' || c == ')').parse().ok()).ok_or(format!("unreadable: {line}"))
}

/// Shares of 10,000 units between tenants of weights 1:2:4 on the real request path.
fn shares() -> String {
    let (quantum, slice, units) = (8, 32, 10_000);
    let mut h = Host::new(quantum, slice);
    let spec = [(1u32, 8u32), (2, 16), (4, 32)];
    let ids: Vec<usize> = spec.iter().map(|&(w, batch)| h.add(w, Script::Ops { batch }, Limits::default())).collect();
    h.run(units, |_| true);
    let total: u64 = ids.iter().map(|&i| h.fair.charged(h.guests[i].slot).cost).sum();
    let wsum: u32 = spec.iter().map(|s| s.0).sum();
    let mut worst = 0.0f64;
    let rows: Vec<String> = ids
        .iter()
        .zip(spec)
        .map(|(&i, (w, batch))| {
            let c = h.fair.charged(h.guests[i].slot);
            let share = c.cost as f64 / total as f64;
            let want = f64::from(w) / f64::from(wsum);
            let err = (share - want) / want;
            worst = worst.max(err.abs());
            format!(
                "{{\"weight\":{w},\"ops_per_doorbell\":{batch},\"units\":{},\"cost\":{},\"share\":{},\"weight_share\":{},\"relative_error\":{}}}",
                c.units,
                c.cost,
                f(share),
                f(want),
                f(err)
            )
        })
        .collect();
    format!(
        "{{\"kind\":\"real request path on the host: hypervisor::dispatch requests picked by hypervisor::sched::fair (DRR, post-charged), cost = work (1 per operation)\",\
         \"units\":{},\"quantum\":{quantum},\"engine_slice\":{slice},\"worst_relative_error\":{},\"tenants\":[{}]}}",
        h.units,
        f(worst),
        rows.join(",")
    )
}

/// Flooders against an honest tenant on the real request path with the tiny model.
fn flood() -> String {
    let (quantum, slice) = (8, 32);
    let mut h = Host::new(quantum, slice);
    h.add(4, Script::Generate { tokens: 300, rounds: 0 }, Limits::default());
    h.add(4, Script::Ops { batch: 64 }, Limits { inflight_ops: 64, ..Limits::default() });
    h.run(500, |_| true);
    let honest = h.add(1, Script::Generate { tokens: 12, rounds: 2 }, Limits::default());
    h.run(20_000, |h| h.guests[honest].phase != Phase::Finished);
    let g = &h.guests[honest];
    let c = h.fair.max_unit();
    let round = h.fair.round_bound(g.slot, c);
    let waits: Vec<String> = g
        .waits
        .iter()
        .map(|&(units, others)| format!("{{\"units\":{units},\"others_cost_meanwhile\":{others},\"bound\":{}}}", units * round))
        .collect();
    format!(
        "{{\"kind\":\"real request path on the host with the tiny model; cost = work (1 per token or operation, a prefill its prompt length)\",\
         \"flooders\":[{{\"weight\":4,\"generate_tokens\":300}},{{\"weight\":4,\"ops_per_doorbell\":64}}],\"honest\":{{\"weight\":1,\"generate_tokens\":12,\"rounds\":2}},\
         \"quantum\":{quantum},\"max_unit_cost\":{c},\"round_bound\":{round},\"honest_finished\":{},\"honest_requests\":[{}]}}",
        g.phase == Phase::Finished,
        waits.join(",")
    )
}

/// Boots `n` infer tenants on the tiny model in Bochs; returns the memory row.
fn memory_row(n: usize, model: &std::path::Path, infer: &std::path::Path) -> Result<String, String> {
    let name = format!("bench-tenants-{n}");
    let mut spec = ImageSpec::new(&name, Firmware::Bios).module(model.to_path_buf(), "model:tiny.gguf");
    for i in 0..n {
        spec = spec.module(infer.to_path_buf(), &format!("guest:t{i} prompt=2,{} max_tokens=1 mem_mib=8", 100 + i));
    }
    let iso = image::make_image(&spec)?;
    let mut run = RunSpec::new(iso, Firmware::Bios, Emulator::Bochs, image::build_dir().join(&name));
    run.timeout = Duration::from_secs(900);
    let out = emulator::boot(&run)?;
    if out.verdict != Verdict::Success {
        return Err(format!("{name} failed\n{}", out.describe()));
    }
    let s = &out.serial;
    let weights = number_after(s, "loading model tiny.gguf (")?;
    let frames = number_after(s, &format!("memory: {n} tenant(s) loaded: "))?;
    let heap_before = number_after(s, "bytes of frames (guest RAM, EPT tables), heap ")?;
    let peak = number_after(s, "memory: heap peak while the tenants ran ")?;
    let growth = peak.saturating_sub(heap_before);
    let finished = s.lines().filter(|l| l.contains(": exited with status 0")).count();
    let total = weights + heap_before + frames + growth;
    let copied = total + weights * (n as u64 - 1);
    Ok(format!(
        "{{\"tenants\":{n},\"tenants_finished\":{finished},\"weights_bytes\":{weights},\"heap_before_tenants_bytes\":{heap_before},\
         \"tenant_frames_bytes\":{frames},\"session_heap_peak_bytes\":{growth},\"total_bytes\":{total},\"total_if_weights_per_tenant_bytes\":{copied}}}"
    ))
}

pub fn run(args: &[String]) -> Result<(), String> {
    let mut boots = true;
    for a in args {
        match a.as_str() {
            "--no-boot" => boots = false,
            other => return Err(format!("unknown option `{other}` (bench tenants takes --no-boot: skip the Bochs memory runs)")),
        }
    }
    let shares = shares();
    let flood = flood();

    let memory = if boots {
        crate::setup::ensure()?;
        let dir = image::build_dir().join("bench-tenants");
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let model = dir.join("tiny.gguf");
        std::fs::write(&model, engine::tiny::tiny_gemma3(1)).map_err(|e| e.to_string())?;
        let infer = image::guest_elf("infer")?;
        let rows: Vec<Result<String, String>> = std::thread::scope(|s| {
            let handles: Vec<_> = [1usize, 2, 4].iter().map(|&n| s.spawn({
                let (model, infer) = (&model, &infer);
                move || memory_row(n, model, infer)
            })).collect();
            handles.into_iter().map(|h| h.join().unwrap_or_else(|_| Err("boot thread panicked".into()))).collect()
        });
        let rows = rows.into_iter().collect::<Result<Vec<_>, _>>()?;
        format!(
            "{{\"kind\":\"measured in Bochs: the hypervisor's frame allocator and heap, infer tenants (8 MiB each, one 128-token session) on the tiny model\",\"rows\":[{}]}}",
            rows.join(",")
        )
    } else {
        "null".to_string()
    };

    // The simulation, for comparison with the measured shares.
    let weights = [1u32, 2, 4];
    let r = sim::shares(&weights, 10_000, 4, 1000, 64, 7).map_err(|e| e.to_string())?;
    let worst = (0..weights.len()).map(|i| r.relative_error(i).abs()).fold(0.0, f64::max);
    println!(
        "{{\"shares\":{shares},\"flood\":{flood},\"memory\":{memory},\
         \"simulation\":{{\"kind\":\"simulation of hypervisor::sched::Scheduler with 4 simulated workers\",\"ops\":10000,\"worst_relative_error\":{}}}}}",
        f(worst)
    );
    Ok(())
}
