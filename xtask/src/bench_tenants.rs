//! `cargo xtask bench tenants`: what several tenants on one box cost and get, as one JSON object.
//!
//! - `scheduler`: **measured in simulation**: the hypervisor's deficit-round-robin scheduler
//!   (`hypervisor::sched`, the code the hypervisor runs) driven by simulated engine workers:
//!   10,000 operations from three always-backlogged tenants with weights 1:2:4, each tenant's
//!   share of the served cost against its weight share; and a flooding tenant against an honest
//!   one, the honest operations' worst wait against the scheduler's stated bound.
//! - `memory`: **a model, not measured on a booted system**: the memory 1, 2 and 4 tenants on one
//!   model need, from the tenant manifest (guest RAM, KV-cache quota) and the model (GGUF bytes,
//!   loaded once and shared read-only; KV cache per session of `--context` tokens, each tenant's
//!   own, never shared): `model + sum over tenants (guest RAM + KV cache)`, beside what copying
//!   the weights into every tenant would take.

use crate::manifest;
use hypervisor::sched::sim;
use std::path::PathBuf;

/// KV-cache bytes per token of context, as the hypervisor charges them (`dispatch/llm.rs`:
/// f32 keys and values for every layer and KV head).
fn kv_bytes_per_token(gguf: &[u8]) -> Result<u64, String> {
    let g = engine::gguf::Gguf::parse(gguf).map_err(|e| format!("model: {e:?}"))?;
    let c = engine::model::Config::from_gguf(&g).map_err(|e| format!("model: {e:?}"))?;
    Ok(2 * 4 * (c.n_layer as u64) * (c.n_head_kv as u64) * (c.head_dim as u64))
}

fn f(x: f64) -> String {
    format!("{x:.5}")
}

pub fn run(args: &[String]) -> Result<(), String> {
    let mut config = manifest::default_config();
    let mut model: Option<PathBuf> = None;
    let mut context: u64 = 256;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = || it.next().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--config" => config = PathBuf::from(value()?),
            "--model" => model = Some(PathBuf::from(value()?)),
            "--context" => context = value()?.parse().map_err(|_| "--context takes a number of tokens")?,
            other => return Err(format!("unknown option `{other}` (bench tenants takes --config FILE, --model FILE, --context N)")),
        }
    }

    // Scheduler, in simulation.
    let weights = [1u32, 2, 4];
    let (ops, workers, max_cost, inflight, seed) = (10_000u64, 4usize, 1000u64, 64u32, 7u64);
    let r = sim::shares(&weights, ops, workers, max_cost, inflight, seed).map_err(|e| e.to_string())?;
    let tenants_json: Vec<String> = (0..weights.len())
        .map(|i| {
            format!(
                "{{\"weight\":{},\"ops\":{},\"cost\":{},\"share\":{},\"weight_share\":{},\"relative_error\":{}}}",
                weights[i],
                r.ops[i],
                r.cost[i],
                f(r.share(i)),
                f(r.weight_share(i)),
                f(r.relative_error(i))
            )
        })
        .collect();
    let worst = (0..weights.len()).map(|i| r.relative_error(i).abs()).fold(0.0, f64::max);
    let fl = sim::flood(1, 10, &[4], 256, 1, max_cost, 1000).map_err(|e| e.to_string())?;
    let fl4 = sim::flood(1, 10, &[4, 4, 4], 256, 4, max_cost, 1000).map_err(|e| e.to_string())?;
    let flood_json = |name: &str, flooders: &str, workers: usize, x: &sim::FloodReport| {
        format!(
            "{{\"case\":\"{name}\",\"honest\":{{\"weight\":1,\"cost\":10,\"in_flight\":1}},\"flooders\":{flooders},\"workers\":{workers},\
             \"honest_ops\":{},\"flooder_ops\":{},\"flooder_submissions_refused\":{},\
             \"max_flooder_cost_ahead\":{},\"cost_ahead_bound\":{},\"max_wait\":{},\"wait_bound\":{},\"mean_wait\":{},\
             \"flooder_cost_queued_at_submission_max\":{}}}",
            x.honest_ops, x.flooder_ops, x.flooder_refused, x.max_cost_ahead, x.cost_bound, x.max_wait, x.wait_bound, x.mean_wait, x.max_queued_ahead
        )
    };

    // Memory, as a model.
    let compiled = manifest::compile_file(&config)?;
    let (model_name, gguf) = match &model {
        Some(p) => (p.display().to_string(), std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()))?),
        None => ("tiny (engine::tiny::tiny_gemma3, seed 1)".to_string(), engine::tiny::tiny_gemma3(1)),
    };
    let model_bytes = gguf.len() as u64;
    let kv_per_token = kv_bytes_per_token(&gguf)?;
    let kv_session = kv_per_token * context;
    let cfg_tenants = &compiled.manifest.tenants;
    let mut rows = Vec::new();
    for n in [1usize, 2, 4] {
        // The first n tenants of the configuration, repeated when it has fewer.
        let picked: Vec<_> = (0..n).map(|i| &cfg_tenants[i % cfg_tenants.len()]).collect();
        let ram: u64 = picked.iter().map(|t| u64::from(t.memory_mib) << 20).sum();
        let kv: u64 = picked.iter().map(|t| kv_session.min(u64::from(t.quota.kv_cache_mib) << 20)).sum();
        let kv_quota: u64 = picked.iter().map(|t| u64::from(t.quota.kv_cache_mib) << 20).sum();
        let total = model_bytes + ram + kv;
        let copied = model_bytes * n as u64 + ram + kv;
        rows.push(format!(
            "{{\"tenants\":{n},\"names\":[{}],\"weights_bytes\":{model_bytes},\"guest_ram_bytes\":{ram},\"kv_cache_bytes\":{kv},\
             \"kv_cache_quota_bytes\":{kv_quota},\"total_bytes\":{total},\"total_if_weights_per_tenant_bytes\":{copied}}}",
            picked.iter().map(|t| format!("\"{}\"", t.name)).collect::<Vec<_>>().join(",")
        ));
    }

    println!(
        "{{\"scheduler\":{{\"kind\":\"simulation of hypervisor::sched (deficit round robin), not a booted system\",\
         \"shares\":{{\"ops\":{ops},\"workers\":{workers},\"max_cost\":{max_cost},\"quantum\":{max_cost},\"in_flight_limit\":{inflight},\"seed\":{seed},\
         \"all_backlogged\":{},\"worst_relative_error\":{},\"tenants\":[{}]}},\
         \"flood\":[{},{}]}},\
         \"memory\":{{\"kind\":\"model from the manifest and the model file, not measured on a booted system\",\
         \"config\":\"{}\",\"model\":\"{}\",\"context_tokens\":{context},\"kv_bytes_per_token\":{kv_per_token},\
         \"kv_bytes_per_session\":{kv_session},\"rows\":[{}]}}}}",
        r.always_backlogged,
        f(worst),
        tenants_json.join(","),
        flood_json("1 flooder, 1 worker", "[{\"weight\":4,\"cost\":1000,\"in_flight\":256}]", 1, &fl),
        flood_json("3 flooders, 4 workers", "[{\"weight\":4,\"cost\":1000,\"in_flight\":256},{\"weight\":4,\"cost\":1000,\"in_flight\":256},{\"weight\":4,\"cost\":1000,\"in_flight\":256}]", 4, &fl4),
        config.strip_prefix(crate::root()).unwrap_or(&config).display(),
        model_name.replace('\\', "\\\\").replace('"', "\\\""),
        rows.join(",")
    );
    Ok(())
}
