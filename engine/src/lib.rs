//! The tensorvisor inference engine (no_std + alloc): GGUF loading, quantized kernels, models,
//! tokenizer and sampling. The hypervisor runs it; the `std` feature adds host tools.
//!
//! Layers: [`gguf`] parses a byte slice; [`quant`] defines the tensor types with scalar
//! reference code; [`kernels`] holds the SIMD versions (the only `unsafe` in the crate);
//! [`tensor`] does matrix products over a [`parallel::Parallel`] worker set; [`model`] is
//! Gemma 3 with a [`model::Session`] owning the KV cache; [`tokenizer`] and [`sampler`] turn
//! text into tokens and logits into tokens; [`generate`] ties them together.
#![no_std]
#![deny(unsafe_code)]

extern crate alloc;
#[cfg(feature = "std")]
extern crate std;

pub mod cpu;
pub mod generate;
pub mod gguf;
pub mod half;
pub mod kernels;
pub mod model;
pub mod parallel;
pub mod quant;
pub mod sampler;
pub mod seqops;
pub mod tensor;
pub mod tiny;
pub mod tokenizer;

#[cfg(feature = "std")]
pub mod host;
