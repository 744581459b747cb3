//! Kernel microbenchmark: times each kind of product of layer 0 (and the output matrix) with
//! `n` activation rows on one worker, printing ns per (row, 32-value block, token) and the
//! weight bytes per second. For A/B work on the kernels; not part of any test.
//!
//! `cargo run --release -p engine --features std --example kbench -- MODEL [N] [REPEATS] [THREADS]`

use engine::cpu::CpuFeatures;
use engine::gguf::Gguf;
use engine::model::Model;
use engine::parallel::Serial;
use engine::tensor::{matmul_many, Compute, Matrix};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let bytes: Box<dyn std::ops::Deref<Target = [u8]>> = if std::env::var_os("KB_SMALL").is_some() {
        Box::new(std::fs::read(&args[1]).expect("read model"))
    } else {
        Box::new(engine::host::HugeBuf::read(std::path::Path::new(&args[1])).expect("read model"))
    };
    let n: usize = args.get(2).map_or(128, |s| s.parse().expect("N"));
    let reps: usize = args.get(3).map_or(5, |s| s.parse().expect("REPEATS"));
    let g = Gguf::parse(&bytes[..]).expect("parse");
    let m = Model::from_gguf(&g).expect("model");
    let threads: usize = args.get(4).map_or(1, |s| s.parse().expect("THREADS"));
    let pool = engine::host::ThreadPool::new(threads);
    let comp = if threads > 1 { Compute { cpu: CpuFeatures::detect(), par: &pool } } else { Compute { cpu: CpuFeatures::detect(), par: &Serial } };
    let l = &m.layers[0];
    let l1 = &m.layers[1];
    let mut cases: Vec<(&str, Vec<Matrix<'_>>)> = vec![
        ("qkv", vec![l.wq, l.wk, l.wv]),
        ("qkv(l1)", vec![l1.wq, l1.wk, l1.wv]),
        ("wo", vec![l.wo]),
        ("gate+up", vec![l.gate, l.up]),
        ("down", vec![l.down]),
        ("down(l1)", vec![l1.down]),
    ];
    if n <= 4 {
        cases.push(("output", vec![m.output]));
    }
    for (name, mats) in cases {
        let cols = mats[0].cols;
        let x: Vec<f32> = (0..n * cols).map(|i| ((i * 7919 % 1000) as f32 - 500.0) / 250.0).collect();
        let mut outs: Vec<Vec<f32>> = mats.iter().map(|mt| vec![0.0; mt.rows * n]).collect();
        let mut best = f64::MAX;
        for _ in 0..reps {
            let mut o: Vec<&mut [f32]> = outs.iter_mut().map(|v| v.as_mut_slice()).collect();
            let t0 = std::time::Instant::now();
            matmul_many(comp, &mats, &x, n, &mut o);
            best = best.min(t0.elapsed().as_secs_f64());
        }
        let rows: usize = mats.iter().map(|mt| mt.rows).sum();
        let wbytes: usize = mats.iter().map(|mt| mt.data.len()).sum();
        let units = (rows * cols / 32 * n) as f64;
        let types: Vec<String> = mats.iter().map(|mt| format!("{:?}", mt.ty)).collect();
        println!(
            "{name:10} {:28} rows {rows:6} n {n:4}: {:8.3} ms  {:6.3} ns/(row,blk,tok)  {:6.2} GB/s weights",
            types.join(","),
            best * 1e3,
            best * 1e9 / units,
            wbytes as f64 / best / 1e9
        );
    }
}
