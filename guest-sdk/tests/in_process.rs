//! The SDK against the real dispatcher and the real engine, in process (no canned answers).

use guest_sdk::console::Console;
use guest_sdk::in_process::InProcess;
use guest_sdk::tensor::{abi_info, model_info, Sampling, Session, SharedRegion};
use guest_sdk::{call, detect, HcallError, Hypercall};
use std::fmt::Write;
use tensor_hcall::desc::RegionFlags;

fn with_tiny() -> InProcess {
    let mut t = InProcess::new(1 << 20);
    t.add_model("tiny", engine::tiny::tiny_gemma3(1)).unwrap();
    t
}

fn engine_tokens(prompt: &[u32], n: usize) -> Vec<u32> {
    let bytes = engine::tiny::tiny_gemma3(1);
    let g = engine::gguf::Gguf::parse(&bytes).unwrap();
    let model = engine::model::Model::from_gguf(&g).unwrap();
    let tok = engine::tokenizer::Tokenizer::from_gguf(&g).unwrap();
    let mut s = engine::model::Session::new(&model, 64);
    let mut sampler = engine::sampler::Sampler::new(engine::sampler::SamplerConfig::default());
    let comp = engine::tensor::Compute { cpu: engine::cpu::CpuFeatures::detect(), par: &engine::parallel::Serial };
    engine::generate::generate(&mut s, comp, &tok, &mut sampler, prompt, n, false, &|| 0, &mut |_| {}).unwrap().tokens
}

#[test]
fn detection_query_and_console() {
    let mut t = with_tiny();
    let info = detect(&mut t).expect("tensorvisor detected");
    assert_eq!(info.version, tensor_hcall::ABI_VERSION);
    let abi = abi_info(&mut t).unwrap();
    assert_eq!(abi.models, 1);
    let m = model_info(&mut t, 0).unwrap();
    assert_eq!(&m.name[..4], b"tiny");
    assert!(m.vocab_size > 0);
    assert_eq!(model_info(&mut t, 5).unwrap_err(), HcallError::NoSuchModel);
    writeln!(Console::new(&mut t), "hello {}", 42).unwrap();
    assert_eq!(t.console, "hello 42\n");
}

#[test]
fn streaming_and_batched_generation_equal_the_engine() {
    let mut t = with_tiny();
    let prompt = [2u32, 302, 275, 264];
    let want = engine_tokens(&prompt, 6);
    let io_gpa = t.alloc(4096, 64);
    // SAFETY: the range is the transport's arena, used for nothing else.
    let io = unsafe { SharedRegion::register(&mut t, io_gpa, 4096, RegionFlags::READ | RegionFlags::WRITE) }.unwrap();

    let s = Session::open(&mut t, 0, 64).unwrap();
    let mut streamed = Vec::new();
    let n = s.generate(&mut t, &io, &prompt, 6, &Sampling::default(), |tok| streamed.push(tok)).unwrap();
    assert_eq!((n, &streamed), (6, &want), "tokens as they come");
    s.close(&mut t).unwrap();

    let s = Session::open(&mut t, 0, 64).unwrap();
    s.prefill(&mut t, &io, 0, &prompt).unwrap();
    assert_eq!(s.generate_into(&mut t, &io, 0x100, 6, &Sampling::default()), Ok(6));
    let mut batched = [0u32; 6];
    io.read_u32s(0x100, &mut batched).unwrap();
    assert_eq!(batched.to_vec(), want, "one call, many tokens");
    assert!(t.counters().tokens >= 16);
}

#[test]
fn misuse_gets_errors() {
    let mut t = with_tiny();
    assert_eq!(call(&mut t, Hypercall::SessionClose { session: 0x0301_0000_0000_0000 }), Err(HcallError::BadHandle));
    // SAFETY: an address outside the arena: the hypervisor refuses it; nothing is accessed.
    let r = unsafe { SharedRegion::register(&mut t, 0x10, 4096, RegionFlags::READ) };
    assert_eq!(r.err(), Some(HcallError::BadAddress));
    let s = Session::open(&mut t, 0, 8).unwrap();
    let io_gpa = t.alloc(64, 64);
    // SAFETY: arena memory, used for nothing else.
    let io = unsafe { SharedRegion::register(&mut t, io_gpa, 64, RegionFlags::READ | RegionFlags::WRITE) }.unwrap();
    assert_eq!(s.prefill(&mut t, &io, 0, &[1; 20]), Err(HcallError::OutOfBounds));
    assert_eq!(s.generate_into(&mut t, &io, 0, 4, &Sampling::default()), Err(HcallError::InvalidArgument), "nothing prefilled");
}
