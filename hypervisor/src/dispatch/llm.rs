//! LLM sessions on hypervisor-loaded models: the [`ModelHost`] trait the dispatcher calls, and
//! [`EngineHost`], its implementation over the engine. Weights are loaded once and shared
//! read-only by every tenant; each session owns its KV cache, and sessions are never shared or
//! reused across tenants (the dispatcher's handles keep them per tenant).

use alloc::boxed::Box;
use alloc::vec::Vec;
use engine::cpu::CpuFeatures;
use engine::model::{Model, Session};
use engine::parallel::{Parallel, Serial};
use engine::sampler::{Sampler, SamplerConfig};
use engine::tensor::Compute;
use engine::tokenizer::Tokenizer;
use tensor_hcall::desc::ModelInfo;
use tensor_hcall::HcallError;

/// Sampling parameters of one `SessionGenerate`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SamplingParams {
    pub temperature: f32,
    pub top_k: u32,
    pub top_p: f32,
    pub seed: u64,
    pub stop_token: Option<u32>,
}

/// One generated token, and whether the session can produce another.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GenStep {
    pub token: u32,
    pub more: bool,
}

/// What the dispatcher needs from the models.
pub trait ModelHost {
    fn model_count(&self) -> usize;
    /// `Query` kind `1 + index`.
    fn model_info(&self, index: usize) -> Option<ModelInfo>;
    /// KV-cache bytes a session of `max_context` tokens on `model` needs (`NoSuchModel`).
    fn kv_bytes(&self, model: u64, max_context: u64) -> Result<u64, HcallError>;
    /// Opens a session; returns the host's session id.
    fn open(&mut self, model: u64, max_context: u64) -> Result<u32, HcallError>;
    /// Evaluates `tokens` at the session's next positions.
    fn prefill(&mut self, session: u32, tokens: &[u32]) -> Result<(), HcallError>;
    /// Starts a generation on `session` with `params` (validated here): the sampler is set up,
    /// no token is produced yet. A generation already under way on the session is replaced.
    fn generate_begin(&mut self, session: u32, params: &SamplingParams) -> Result<(), HcallError>;
    /// One unit of generation work: samples the next token from the session's logits and,
    /// unless it is the stop token, evaluates it (one forward pass), so the next step can
    /// sample. `more` is false when the stop token came or the context is full.
    fn generate_step(&mut self, session: u32) -> Result<GenStep, HcallError>;
    /// Samples up to `max_tokens` tokens, passing each to `emit` as it is produced; returns the
    /// number produced. (All the steps at once; the dispatcher runs them one unit at a time.)
    fn generate(
        &mut self,
        session: u32,
        params: &SamplingParams,
        max_tokens: u32,
        emit: &mut dyn FnMut(u32) -> Result<(), HcallError>,
    ) -> Result<u32, HcallError> {
        self.generate_begin(session, params)?;
        let mut n = 0;
        while n < max_tokens {
            let step = self.generate_step(session)?;
            emit(step.token)?;
            n += 1;
            if !step.more {
                break;
            }
        }
        Ok(n)
    }
    fn close(&mut self, session: u32);
}

struct Loaded {
    name: [u8; 48],
    model: &'static Model<'static>,
    tokenizer: &'static Tokenizer,
}

struct Live {
    model: usize,
    session: Session<'static, 'static>,
    /// Logits after the last evaluated token (none before the first prefill).
    logits: Option<Vec<f32>>,
    history: Vec<u32>,
    /// The generation under way: its sampler (with its random state) and stop token.
    generation: Option<(Sampler, Option<u32>)>,
}

/// Models loaded into the hypervisor and the sessions open on them.
pub struct EngineHost {
    models: Vec<Loaded>,
    sessions: Vec<Option<Live>>,
    cpu: CpuFeatures,
    par: &'static dyn Parallel,
}

impl EngineHost {
    /// An engine host that computes on the calling CPU.
    pub fn new(cpu: CpuFeatures) -> Self {
        Self::with_workers(cpu, &Serial)
    }

    /// An engine host that spreads each matrix product over `par`'s workers.
    pub fn with_workers(cpu: CpuFeatures, par: &'static dyn Parallel) -> Self {
        Self { models: Vec::new(), sessions: Vec::new(), cpu, par }
    }

    /// How many workers compute.
    pub fn workers(&self) -> usize {
        self.par.threads()
    }

    /// Adds a model whose weights live for the rest of the hypervisor's life (a boot module).
    /// Returns its model id.
    pub fn add(&mut self, name: &str, model: Model<'static>, tokenizer: Tokenizer) -> u64 {
        let mut n = [0u8; 48];
        let len = name.len().min(47);
        n[..len].copy_from_slice(&name.as_bytes()[..len]);
        self.models.push(Loaded { name: n, model: Box::leak(Box::new(model)), tokenizer: Box::leak(Box::new(tokenizer)) });
        self.models.len() as u64 - 1
    }

    /// Model `id`'s weights (shared, read-only).
    pub fn model(&self, id: u64) -> Option<&'static Model<'static>> {
        self.models.get(id as usize).map(|m| m.model)
    }

    /// The tokenizer of model `id` (for logs and hosts that tokenize prompts).
    pub fn tokenizer(&self, id: u64) -> Option<&'static Tokenizer> {
        self.models.get(id as usize).map(|m| m.tokenizer)
    }

    pub fn open_sessions(&self) -> usize {
        self.sessions.iter().filter(|s| s.is_some()).count()
    }

    fn live(&mut self, id: u32) -> Result<&mut Live, HcallError> {
        self.sessions.get_mut(id as usize).and_then(Option::as_mut).ok_or(HcallError::BadHandle)
    }

    fn comp(&self) -> Compute<'static> {
        Compute { cpu: self.cpu, par: self.par }
    }
}

fn eval_error(e: engine::model::SessionError) -> HcallError {
    match e {
        engine::model::SessionError::ContextFull { .. } => HcallError::QuotaExceeded,
        engine::model::SessionError::BadToken(_) | engine::model::SessionError::Empty => HcallError::InvalidArgument,
    }
}

impl ModelHost for EngineHost {
    fn model_count(&self) -> usize {
        self.models.len()
    }

    fn model_info(&self, index: usize) -> Option<ModelInfo> {
        let m = self.models.get(index)?;
        Some(ModelInfo {
            id: index as u64,
            vocab_size: m.tokenizer.vocab_size() as u32,
            context_len: m.model.config.context_length as u32,
            name: m.name,
        })
    }

    fn kv_bytes(&self, model: u64, max_context: u64) -> Result<u64, HcallError> {
        let m = self.models.get(usize::try_from(model).map_err(|_| HcallError::NoSuchModel)?).ok_or(HcallError::NoSuchModel)?;
        let c = &m.model.config;
        let ctx = max_context.min(c.context_length as u64);
        // Keys and values, f32, per layer and position.
        Ok(2 * 4 * (c.n_layer as u64) * ctx * (c.n_head_kv as u64) * (c.head_dim as u64))
    }

    fn open(&mut self, model: u64, max_context: u64) -> Result<u32, HcallError> {
        let index = usize::try_from(model).map_err(|_| HcallError::NoSuchModel)?;
        let m = self.models.get(index).ok_or(HcallError::NoSuchModel)?;
        let ctx = usize::try_from(max_context).map_err(|_| HcallError::InvalidArgument)?;
        let live = Live { model: index, session: Session::new(m.model, ctx), logits: None, history: Vec::new(), generation: None };
        if let Some(i) = self.sessions.iter().position(Option::is_none) {
            self.sessions[i] = Some(live);
            return Ok(i as u32);
        }
        self.sessions.push(Some(live));
        Ok(self.sessions.len() as u32 - 1)
    }

    fn prefill(&mut self, session: u32, tokens: &[u32]) -> Result<(), HcallError> {
        let comp = self.comp();
        let vocab = {
            let model = self.live(session)?.model;
            self.models[model].tokenizer.vocab_size()
        };
        if tokens.iter().any(|&t| t as usize >= vocab) {
            return Err(HcallError::InvalidArgument);
        }
        let live = self.live(session)?;
        let logits = live.session.eval(comp, tokens).map_err(eval_error)?;
        live.logits = Some(logits);
        live.history.extend_from_slice(tokens);
        Ok(())
    }

    fn generate_begin(&mut self, session: u32, params: &SamplingParams) -> Result<(), HcallError> {
        let valid = params.temperature >= 0.0 && params.top_p > 0.0 && params.top_p <= 1.0; // false for NaN
        if !valid {
            return Err(HcallError::InvalidArgument);
        }
        let live = self.live(session)?;
        let sampler = Sampler::new(SamplerConfig {
            temperature: params.temperature,
            top_k: params.top_k as usize,
            top_p: params.top_p,
            seed: params.seed,
            ..SamplerConfig::default()
        });
        live.generation = Some((sampler, params.stop_token));
        Ok(())
    }

    fn generate_step(&mut self, session: u32) -> Result<GenStep, HcallError> {
        let comp = self.comp();
        let live = self.live(session)?;
        let (Some(logits), Some((sampler, stop))) = (live.logits.as_mut(), live.generation.as_mut()) else {
            return Err(HcallError::InvalidArgument);
        };
        let next = sampler.sample(logits, &live.history);
        let stop = *stop;
        live.history.push(next);
        if stop == Some(next) {
            live.logits = None;
            return Ok(GenStep { token: next, more: false });
        }
        match live.session.eval(comp, &[next]) {
            Ok(l) => {
                live.logits = Some(l);
                Ok(GenStep { token: next, more: true })
            }
            // The token was produced; the context has no room to go on.
            Err(engine::model::SessionError::ContextFull { .. }) => {
                live.logits = None;
                Ok(GenStep { token: next, more: false })
            }
            Err(e) => Err(eval_error(e)),
        }
    }

    fn close(&mut self, session: u32) {
        if let Some(s) = self.sessions.get_mut(session as usize) {
            *s = None;
        }
    }
}
