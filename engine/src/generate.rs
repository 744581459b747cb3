//! Prompt-to-continuation generation loop shared by the host CLI and the hypervisor.

use alloc::vec::Vec;

use crate::model::{Session, SessionError};
use crate::sampler::Sampler;
use crate::tensor::Compute;
use crate::tokenizer::Tokenizer;

/// What a generation produced, with timings when a clock was supplied.
#[derive(Debug, Clone, Default)]
pub struct Generation {
    pub prompt_tokens: Vec<u32>,
    pub tokens: Vec<u32>,
    /// Nanoseconds spent on the prompt (prefill) and on the generated tokens (decode).
    pub prefill_ns: u64,
    pub decode_ns: u64,
    /// Number of tokens whose evaluation `decode_ns` covers.
    pub decode_evals: usize,
}

/// Evaluates `prompt` and samples up to `max_tokens` tokens (stopping at an end token when
/// `stop_at_end`). `now` returns a monotonic time in nanoseconds (or 0 without a clock);
/// `on_token` sees each new token as it is produced.
#[allow(clippy::too_many_arguments)]
pub fn generate(
    session: &mut Session<'_, '_>,
    comp: Compute<'_>,
    tok: &Tokenizer,
    sampler: &mut Sampler,
    prompt: &[u32],
    max_tokens: usize,
    stop_at_end: bool,
    now: &dyn Fn() -> u64,
    on_token: &mut dyn FnMut(u32),
) -> Result<Generation, SessionError> {
    let mut g = Generation { prompt_tokens: prompt.to_vec(), ..Default::default() };
    if max_tokens == 0 {
        return Ok(g);
    }
    let t0 = now();
    let mut logits = session.eval(comp, prompt)?;
    let t1 = now();
    g.prefill_ns = t1.saturating_sub(t0);
    let mut history = prompt.to_vec();
    loop {
        let next = sampler.sample(&mut logits, &history);
        g.tokens.push(next);
        history.push(next);
        on_token(next);
        if g.tokens.len() >= max_tokens || (stop_at_end && tok.is_end(next)) {
            break;
        }
        let ts = now();
        logits = session.eval(comp, &[next])?;
        g.decode_ns += now().saturating_sub(ts);
        g.decode_evals += 1;
    }
    Ok(g)
}
