//! The tensorvisor inference engine (no_std + alloc): GGUF loading, quantized kernels, models,
//! tokenizer and sampling. The hypervisor runs it; the `std` feature adds host tools.
#![no_std]
