//! The tensors guest: registers shared memory, creates tensors, submits 64 operations (matmul
//! with f32 and Q8_0 weights, add, mul, softmax on two inputs, rmsnorm, rope) with ONE doorbell, and checks
//! every result bit for bit against its own scalar code (the arithmetic the ABI specifies).
//! With `unbatched=1` it rings the doorbell after every operation instead (the benchmark's
//! baseline).
#![no_std]
#![no_main]

use guest_sdk::arch::Vmcall;
use guest_sdk::console::exit;
use guest_sdk::tensor::{Ring, SharedRegion};
use guest_sdk::{println, GuestBootInfo};
use tensor_hcall::desc::{DType, OpCode, RegionFlags};
use tensor_hcall::HcallError;

const DATA_GPA: u64 = 0x30_0000;
const DATA_LEN: u64 = 0x4_0000;
const RING_GPA: u64 = 0x34_0000;
const OPS: usize = 64;
const M: usize = 3;
const N: usize = 4;
const K: usize = 32;
const R: usize = 4;
const C: usize = 16;

struct Rng(u64);
impl Rng {
    fn f32(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 40) as f32 / (1u64 << 24) as f32 * 4.0 - 2.0
    }
}

/// f32 -> f16 bits for the Q8_0 scale 0.5 (exact in f16).
const HALF_F16: u16 = 0x3800;

fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut s = 0.0f32;
    for (x, y) in a.iter().zip(b) {
        s += x * y;
    }
    s
}

/// The inputs every operation reads.
struct Inputs {
    a: [f32; M * K],
    b: [f32; N * K],
    bq: [f32; N * K],
    x: [f32; R * C],
    y: [f32; R * C],
    w: [f32; C],
}

fn softmax_rows(src: &[f32; R * C], out: &mut [f32; R * C]) {
    for r in 0..R {
        let row = &src[r * C..(r + 1) * C];
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut s = 0.0f32;
        for i in 0..C {
            out[r * C + i] = libm::expf(row[i] - max);
            s += out[r * C + i];
        }
        for i in 0..C {
            out[r * C + i] /= s;
        }
    }
}

fn expected(kind: usize, inp: &Inputs, out: &mut [f32; R * C]) -> usize {
    let Inputs { a, b, bq, x, y, w } = inp;
    match kind {
        0 | 1 => {
            let bb = if kind == 0 { b } else { bq };
            for i in 0..M {
                for j in 0..N {
                    out[i * N + j] = dot(&a[i * K..(i + 1) * K], &bb[j * K..(j + 1) * K]);
                }
            }
            M * N
        }
        2 => {
            for i in 0..R * C {
                out[i] = x[i] + y[i];
            }
            R * C
        }
        7 => {
            softmax_rows(y, out);
            R * C
        }
        3 => {
            for i in 0..R * C {
                out[i] = x[i] * y[i];
            }
            R * C
        }
        4 => {
            softmax_rows(x, out);
            R * C
        }
        5 => {
            for r in 0..R {
                let row = &x[r * C..(r + 1) * C];
                let mut s = 0.0f32;
                for v in row {
                    s += v * v;
                }
                let k = 1.0 / libm::sqrtf(s / C as f32 + 1e-6);
                for i in 0..C {
                    out[r * C + i] = row[i] * k * w[i];
                }
            }
            R * C
        }
        _ => {
            // rope over [2, 2, 16] from position 5: row r has position 5 + r % 2.
            for r in 0..R {
                let row = &x[r * C..(r + 1) * C];
                let pos = (5 + r % 2) as f32;
                for p in 0..C / 2 {
                    let th = pos * libm::powf(10000.0, -((2 * p) as f32) / C as f32);
                    let (s, c) = (libm::sinf(th), libm::cosf(th));
                    out[r * C + p] = row[p] * c - row[p + C / 2] * s;
                    out[r * C + p + C / 2] = row[p] * s + row[p + C / 2] * c;
                }
            }
            R * C
        }
    }
}

fn rdtsc() -> u64 {
    // SAFETY: RDTSC only reads the time-stamp counter.
    unsafe { core::arch::x86_64::_rdtsc() }
}

fn run(unbatched: bool) -> Result<u32, HcallError> {
    let mut t = Vmcall::new();
    // SAFETY: both areas are this guest's RAM, above its image and below its stack, used for
    // nothing else.
    let data = unsafe { SharedRegion::register(&mut t, DATA_GPA, DATA_LEN, RegionFlags::READ | RegionFlags::WRITE)? };
    let mut rng = Rng(0x1234_5678);
    let a: [f32; M * K] = core::array::from_fn(|_| rng.f32());
    let b: [f32; N * K] = core::array::from_fn(|_| rng.f32());
    let x: [f32; R * C] = core::array::from_fn(|_| rng.f32());
    let y: [f32; R * C] = core::array::from_fn(|_| rng.f32());
    let w: [f32; C] = core::array::from_fn(|_| rng.f32());
    data.write_f32s(0, &a)?;
    data.write_f32s(0x1000, &b)?;
    data.write_f32s(0x2000, &x)?;
    data.write_f32s(0x3000, &y)?;
    data.write_f32s(0x4000, &w)?;
    let mut bq = [0f32; N * K];
    for r in 0..N {
        let base = 0x5000 + (r * 34) as u64;
        data.write_bytes(base, &HALF_F16.to_le_bytes())?;
        for c in 0..K {
            let q = ((r * 7 + c * 3) % 17) as i8 - 8;
            data.write_bytes(base + 2 + c as u64, &[q as u8])?;
            bq[r * K + c] = 0.5 * f32::from(q);
        }
    }
    let ta = data.tensor(&mut t, DType::F32, 0, &[M as u64, K as u64])?;
    let tb = data.tensor(&mut t, DType::F32, 0x1000, &[N as u64, K as u64])?;
    let tq = data.tensor(&mut t, DType::Q8_0, 0x5000, &[N as u64, K as u64])?;
    let tx = data.tensor(&mut t, DType::F32, 0x2000, &[R as u64, C as u64])?;
    let ty = data.tensor(&mut t, DType::F32, 0x3000, &[R as u64, C as u64])?;
    let tw = data.tensor(&mut t, DType::F32, 0x4000, &[C as u64])?;
    let tr = data.tensor(&mut t, DType::F32, 0x2000, &[2, 2, C as u64])?;
    let eps = u64::from(1e-6f32.to_bits());
    let base = u64::from(10000f32.to_bits());
    // SAFETY: see above.
    let mut ring = unsafe { Ring::new(&mut t, RING_GPA, 64)? };
    let mut outs = [0u64; OPS];
    for (i, o) in outs.iter_mut().enumerate() {
        let shape: &[u64] = match i % 8 {
            0 | 1 => &[M as u64, N as u64],
            6 => &[2, 2, C as u64],
            _ => &[R as u64, C as u64],
        };
        *o = data.tensor(&mut t, DType::F32, 0x10000 + (i as u64) * 0x400, shape)?;
    }
    let (mut doorbells, mut ran) = (0u64, 0u64);
    let t0 = rdtsc();
    for (i, &out) in outs.iter().enumerate() {
        let kind = i % 8;
        let (op, ins, params): (OpCode, &[u64], [u64; 2]) = match kind {
            0 => (OpCode::Matmul, &[ta, tb], [0, 0]),
            1 => (OpCode::Matmul, &[ta, tq], [0, 0]),
            2 => (OpCode::Add, &[tx, ty], [0, 0]),
            3 => (OpCode::Mul, &[tx, ty], [0, 0]),
            4 => (OpCode::Softmax, &[tx], [0, 0]),
            5 => (OpCode::RmsNorm, &[tx, tw], [eps, 0]),
            6 => (OpCode::Rope, &[tr], [5, base]),
            _ => (OpCode::Softmax, &[ty], [0, 0]),
        };
        ring.push(i as u64, op, ins, out, params)?;
        if unbatched {
            ran += ring.submit(&mut t)?;
            doorbells += 1;
        }
    }
    if !unbatched {
        ran = ring.submit(&mut t)?;
        doorbells = 1;
    }
    let ticks = rdtsc() - t0;
    if unbatched {
        println!("tensors: {OPS} ops submitted with {doorbells} doorbells, {ran} ran");
    } else {
        println!("tensors: {OPS} ops submitted with one doorbell, {ran} ran");
    }
    println!("tensors: submit phase: {doorbells} doorbells for {OPS} ops, {ticks} TSC ticks");
    let inputs = Inputs { a, b, bq, x, y, w };
    let mut failures = 0u32;
    let mut completions = 0;
    while let Some(c) = ring.complete() {
        completions += 1;
        if c.status != 0 {
            println!("tensors: op {} failed with status {}", c.user_data, c.status);
            failures += 1;
        }
    }
    let mut want = [0f32; R * C];
    let mut got = [0f32; R * C];
    for i in 0..OPS {
        let n = expected(i % 8, &inputs, &mut want);
        data.read_f32s(0x10000 + (i as u64) * 0x400, &mut got[..n])?;
        if got[..n].iter().zip(&want[..n]).any(|(g, e)| g.to_bits() != e.to_bits()) {
            println!("tensors: op {i} (kind {}) is not bit-exact", i % 8);
            failures += 1;
        }
    }
    println!("tensors: {completions} completions, {} of {OPS} results bit-exact", OPS as u32 - failures.min(OPS as u32));
    Ok(failures + u32::from(ran != OPS as u64) + u32::from(completions != OPS))
}

#[unsafe(no_mangle)]
#[unsafe(link_section = ".text._start")]
extern "C" fn _start(boot: &'static GuestBootInfo) -> ! {
    match run(boot.arg("unbatched") == Some("1")) {
        Ok(f) => exit(f),
        Err(e) => {
            println!("tensors: failed: {e:?}");
            exit(100)
        }
    }
}
