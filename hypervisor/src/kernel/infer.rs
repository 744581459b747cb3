//! Inference inside the hypervisor, without any guest: a GGUF model delivered as a boot module
//! (`model:NAME`) and a boot configuration module (`boot.cfg`, lines of `key=value`: `prompt`,
//! `max_tokens`, and optionally `temperature`, `top_k`, `top_p`, `seed`) produce a continuation
//! that is printed on the log, token ids and text. The kernels are the hard-float object's (see
//! [`super::simd`]): the result equals the host CLI's with the same kernels (AVX2, or
//! `tvgen --portable`).

use super::tsc;
use alloc::string::String;
use engine::generate::generate;
use engine::gguf::Gguf;
use engine::model::{Model, Session};
use hypervisor::dispatch::EngineHost;
use engine::sampler::{Sampler, SamplerConfig};
use engine::tensor::Compute;
use engine::tokenizer::Tokenizer;
use hypervisor::multiboot2::Module;

/// A value from the boot configuration (`key=value` lines; the value runs to the end of line).
pub fn config_value<'a>(cfg: &'a str, key: &str) -> Option<&'a str> {
    cfg.lines().find_map(|l| l.trim().strip_prefix(key)?.trim_start().strip_prefix('=').map(str::trim))
}

fn ids(v: &[u32]) -> String {
    let mut s = String::new();
    for (i, t) in v.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        s.push_str(&alloc::format!("{t}"));
    }
    s
}

/// Loads every `model:NAME` boot module and every model read from the NVMe model store into the
/// engine host all tenants share. A model that cannot be loaded is logged and left out; returns
/// false if that happened.
pub fn load_models(modules: &[(Module<'_>, &'static [u8])]) -> (EngineHost, bool) {
    let cpu = super::simd::features();
    let mut host = EngineHost::with_workers(cpu, &super::smp::CpuPool);
    let mut ok = true;
    let mut sources: alloc::vec::Vec<(String, &'static [u8], &str)> = modules
        .iter()
        .filter(|(m, _)| m.cmdline.starts_with("model:"))
        .map(|(m, b)| (String::from(m.cmdline.trim_start_matches("model:")), *b, "boot module"))
        .collect();
    for m in super::devices::MODELS.lock().iter() {
        // The store holds named extents; only GGUF files among them are models.
        if m.bytes.starts_with(b"GGUF") {
            sources.push((m.name.clone(), m.bytes, "NVMe model store"));
        } else {
            log::warn!("store entry {} is not a GGUF file: not loaded as a model", m.name);
        }
    }
    for (name, bytes, source) in sources {
        let name = name.as_str();
        log::info!("loading model {name} ({} bytes) from the {source}", bytes.len());
        let loaded = Gguf::parse(bytes).map_err(|e| alloc::format!("{e}")).and_then(|g| {
            match (Model::from_gguf(&g), Tokenizer::from_gguf(&g)) {
                (Ok(m), Ok(t)) => Ok((m, t)),
                (Err(e), _) | (_, Err(e)) => Err(alloc::format!("{e}")),
            }
        });
        match loaded {
            Ok((model, tok)) => {
                let c = &model.config;
                log::info!(
                    "model {name}: {} layers, embedding {}, {} heads ({} KV), vocab {}, context {}; kernels: {}",
                    c.n_layer,
                    c.n_embd,
                    c.n_head,
                    c.n_head_kv,
                    tok.vocab_size(),
                    c.context_length,
                    cpu.describe()
                );
                let id = host.add(name, model, tok);
                log::info!("model {name}: id {id}, weights shared read-only by all tenants");
            }
            Err(e) => {
                log::error!("model {name}: {e}");
                ok = false;
            }
        }
    }
    (host, ok)
}

/// Runs the boot-configured generation on model 0 if a `boot.cfg` with a prompt was delivered.
/// Returns false when it was asked for but could not run (the error is logged).
pub fn run(host: &EngineHost, modules: &[(Module<'_>, &'static [u8])]) -> bool {
    let Some((_, cfg)) = modules.iter().find(|(m, _)| m.cmdline == "boot.cfg") else { return true };
    let cfg = core::str::from_utf8(cfg).unwrap_or("");
    let Some(prompt) = config_value(cfg, "prompt") else {
        log::error!("boot.cfg has no prompt= line");
        return false;
    };
    let (Some(model), Some(tok)) = (host.model(0), host.tokenizer(0)) else {
        log::error!("boot.cfg asks for a generation but no model was loaded");
        return false;
    };
    let max_tokens: usize = config_value(cfg, "max_tokens").and_then(|v| v.parse().ok()).unwrap_or(16);
    let comp = Compute { cpu: super::simd::features(), par: &super::smp::CpuPool };
    log::info!("engine workers: {} CPUs", engine::parallel::Parallel::threads(&super::smp::CpuPool));
    let prompt_ids = tok.encode(prompt, true, false);
    log::info!("prompt \"{prompt}\" = tokens [{}]", ids(&prompt_ids));
    let mut session = Session::new(model, prompt_ids.len() + max_tokens + 1);
    let parse_f32 = |k: &str, d: f32| config_value(cfg, k).and_then(|v| v.parse().ok()).unwrap_or(d);
    let sampling = SamplerConfig {
        temperature: parse_f32("temperature", 0.0),
        top_k: config_value(cfg, "top_k").and_then(|v| v.parse().ok()).unwrap_or(0),
        top_p: parse_f32("top_p", 1.0),
        seed: config_value(cfg, "seed").and_then(|v| v.parse().ok()).unwrap_or(0),
        ..SamplerConfig::default()
    };
    log::info!(
        "sampling: temperature {}, top-k {}, top-p {}, seed {}",
        sampling.temperature,
        sampling.top_k,
        sampling.top_p,
        sampling.seed
    );
    let mut sampler = Sampler::new(sampling);
    let now = || tsc::micros_since_boot() * 1000;
    // Each token lets the console's queue move on (a long generation logs nothing meanwhile).
    match generate(&mut session, comp, tok, &mut sampler, &prompt_ids, max_tokens, true, &now, &mut |_| super::serial::pump()) {
        Ok(g) => {
            let text: String = tok.decode(&g.tokens).chars().map(|ch| if ch.is_control() { ' ' } else { ch }).collect();
            log::info!("generated tokens [{}]", ids(&g.tokens));
            log::info!("text \"{text}\"");
            let per_s = |n: usize, ns: u64| if ns == 0 { 0.0 } else { n as f64 * 1e9 / ns as f64 };
            log::info!(
                "prefill {:.1} tok/s, decode {:.1} tok/s (emulated time)",
                per_s(g.prompt_tokens.len(), g.prefill_ns),
                per_s(g.decode_evals, g.decode_ns)
            );
            true
        }
        Err(e) => {
            log::error!("generation failed: {e}");
            false
        }
    }
}
