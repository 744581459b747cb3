//! The executable itself: Linux system calls, heap, entry point, and the two timed runs.

extern crate alloc;

use alloc::vec::Vec;
use core::arch::{asm, naked_asm};
use engine::cpu::CpuFeatures;
use engine::gguf::Gguf;
use engine::model::{Model, Session};
use engine::parallel::Serial;
use engine::tensor::Compute;

const SYS_WRITE: usize = 1;
const SYS_OPEN: usize = 2;
const SYS_CLOSE: usize = 3;
const SYS_LSEEK: usize = 8;
const SYS_MMAP: usize = 9;
const SYS_CLOCK_GETTIME: usize = 228;
const SYS_EXIT_GROUP: usize = 231;

/// A Linux system call (x86-64 convention); the kernel's result (negative: `-errno`).
fn syscall(n: usize, a: [usize; 6]) -> isize {
    let r: isize;
    // SAFETY: every call below passes arguments valid for its system call (buffers with their
    // lengths, NUL-terminated paths); the kernel clobbers only RCX and R11.
    unsafe {
        asm!("syscall", inlateout("rax") n as isize => r, in("rdi") a[0], in("rsi") a[1], in("rdx") a[2],
             in("r10") a[3], in("r8") a[4], in("r9") a[5], lateout("rcx") _, lateout("r11") _, options(nostack))
    };
    r
}

fn write(fd: usize, mut b: &[u8]) {
    while !b.is_empty() {
        let n = syscall(SYS_WRITE, [fd, b.as_ptr() as usize, b.len(), 0, 0, 0]);
        if n <= 0 {
            return;
        }
        b = &b[n as usize..];
    }
}

fn exit(code: usize) -> ! {
    syscall(SYS_EXIT_GROUP, [code, 0, 0, 0, 0, 0]);
    loop {
        core::hint::spin_loop();
    }
}

/// CLOCK_MONOTONIC in nanoseconds.
fn now_ns() -> u64 {
    let mut ts = [0i64; 2];
    syscall(SYS_CLOCK_GETTIME, [1, ts.as_mut_ptr() as usize, 0, 0, 0, 0]);
    ts[0] as u64 * 1_000_000_000 + ts[1] as u64
}

/// `len` bytes of fresh anonymous memory (reserved lazily).
fn map_anon(len: usize) -> *mut u8 {
    // PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE.
    let p = syscall(SYS_MMAP, [0, len, 3, 0x2 | 0x20 | 0x4000, usize::MAX, 0]);
    if p < 0 {
        fail(&alloc::format!("mmap of {len} bytes: errno {}", -p));
    }
    p as *mut u8
}

/// The file at `path`, mapped read-only for the program's life.
fn map_file(path: &str) -> &'static [u8] {
    let mut c = Vec::from(path.as_bytes());
    c.push(0);
    let fd = syscall(SYS_OPEN, [c.as_ptr() as usize, 0, 0, 0, 0, 0]);
    if fd < 0 {
        fail(&alloc::format!("cannot open {path}: errno {}", -fd));
    }
    let len = syscall(SYS_LSEEK, [fd as usize, 0, 2, 0, 0, 0]);
    if len <= 0 {
        fail(&alloc::format!("{path}: empty or unreadable"));
    }
    // PROT_READ, MAP_PRIVATE.
    let p = syscall(SYS_MMAP, [0, len as usize, 1, 0x2, fd as usize, 0]);
    syscall(SYS_CLOSE, [fd as usize, 0, 0, 0, 0, 0]);
    if p < 0 {
        fail(&alloc::format!("mmap of {path}: errno {}", -p));
    }
    // SAFETY: a private read-only mapping of `len` bytes that is never unmapped.
    unsafe { core::slice::from_raw_parts(p as *const u8, len as usize) }
}

fn fail(msg: &str) -> ! {
    write(2, b"hvengine-bench: ");
    write(2, msg.as_bytes());
    write(2, b"\n");
    exit(1)
}

#[global_allocator]
static HEAP: linked_list_allocator::LockedHeap = linked_list_allocator::LockedHeap::empty();

/// Up to 512 bytes of a panic message, without allocating.
struct Msg {
    buf: [u8; 512],
    len: usize,
}

impl core::fmt::Write for Msg {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        let n = s.len().min(self.buf.len() - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        Ok(())
    }
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    let mut m = Msg { buf: [0; 512], len: 0 };
    let _ = core::fmt::write(&mut m, format_args!("hvengine-bench: {info}\n"));
    write(2, &m.buf[..m.len]);
    exit(101)
}

/// The process entry: RSP points at `argc`, then the `argv` pointers.
#[unsafe(naked)]
#[no_mangle]
extern "C" fn _start() -> ! {
    naked_asm!("mov rdi, rsp", "and rsp, -16", "call {entry}", "ud2", entry = sym entry)
}

extern "C" fn entry(sp: *const usize) -> ! {
    const HEAP_BYTES: usize = 4 << 30;
    let heap = map_anon(HEAP_BYTES);
    // SAFETY: a fresh mapping of HEAP_BYTES writable bytes, used by nothing else.
    unsafe { HEAP.lock().init(heap, HEAP_BYTES) };
    // SAFETY: the kernel puts argc at RSP and argc NUL-terminated argument pointers after it.
    let args: Vec<&'static str> = unsafe {
        let argc = *sp;
        (1..argc)
            .map(|i| {
                let p = *sp.add(1 + i) as *const u8;
                let mut n = 0;
                while *p.add(n) != 0 {
                    n += 1;
                }
                core::str::from_utf8(core::slice::from_raw_parts(p, n)).unwrap_or("")
            })
            .collect()
    };
    // `object-only` skips the slow soft-float run (for profiling the object's).
    if args.len() != 3 && !(args.len() == 4 && args[3] == "object-only") {
        fail("usage: hvengine-bench MODEL.gguf PROMPT_TOKENS DECODE_TOKENS [object-only]");
    }
    let (Ok(n_prompt), Ok(n_decode)) = (args[1].parse::<usize>(), args[2].parse::<usize>()) else {
        fail("PROMPT_TOKENS and DECODE_TOKENS are counts")
    };
    run(args[0], n_prompt.max(1), n_decode.max(1), args.len() == 3);
    exit(0)
}

/// Seconds of the prompt's evaluation, seconds of the decode steps, and the greedy tokens.
fn timed(m: &Model<'_>, cpu: CpuFeatures, prompt: &[u32], n_decode: usize) -> (f64, f64, Vec<u32>) {
    let comp = Compute { cpu, par: &Serial };
    let mut s = Session::new(m, prompt.len() + n_decode + 1);
    let t0 = now_ns();
    let mut logits = s.eval(comp, prompt).unwrap_or_else(|e| fail(&alloc::format!("{e}")));
    let t1 = now_ns();
    let mut tokens = Vec::new();
    for _ in 0..n_decode {
        let next = engine::sampler::argmax(&logits);
        tokens.push(next);
        logits = s.eval(comp, &[next]).unwrap_or_else(|e| fail(&alloc::format!("{e}")));
    }
    let t2 = now_ns();
    ((t1 - t0) as f64 * 1e-9, (t2 - t1) as f64 * 1e-9, tokens)
}

fn run(path: &str, n_prompt: usize, n_decode: usize, with_soft: bool) {
    let bytes = map_file(path);
    let g = Gguf::parse(bytes).unwrap_or_else(|e| fail(&alloc::format!("{path}: {e}")));
    let m = Model::from_gguf(&g).unwrap_or_else(|e| fail(&alloc::format!("{path}: {e}")));
    let vocab = m.config.n_vocab as u32;
    // A fixed prompt: BOS, then ids spread over the vocabulary.
    let prompt: Vec<u32> = core::iter::once(2).chain((1..n_prompt as u32).map(|i| 1000 + (i * 7919) % (vocab - 1000))).collect();
    let (sp, sd, st) = if with_soft { timed(&m, CpuFeatures::portable(), &prompt, n_decode) } else { (f64::NAN, f64::NAN, Vec::new()) };
    let mut json = alloc::format!(
        "{{\"bench\":\"hvengine\",\"model\":\"{path}\",\"threads\":1,\"prompt_tokens\":{n_prompt},\"decode_tokens\":{n_decode},\"soft_float\":{{\"kernels\":\"{}\",\"prefill_tok_s\":{:.3},\"decode_tok_s\":{:.3}}}",
        CpuFeatures::portable().describe(),
        n_prompt as f64 / sp,
        n_decode as f64 / sd
    );
    match object() {
        Some(cpu) => {
            let (hp, hd, ht) = timed(&m, cpu, &prompt, n_decode);
            json.push_str(&alloc::format!(
                ",\"kernel_object\":{{\"kernels\":\"{}\",\"prefill_tok_s\":{:.3},\"decode_tok_s\":{:.3}}},\"prefill_ratio\":{:.2},\"decode_ratio\":{:.2},\"same_tokens\":{}",
                cpu.describe(),
                n_prompt as f64 / hp,
                n_decode as f64 / hd,
                sp / hp,
                sd / hd,
                st == ht
            ));
        }
        None => json.push_str(",\"kernel_object\":null"),
    }
    json.push_str("}\n");
    write(1, json.as_bytes());
}

#[cfg(kernel_object)]
fn object() -> Option<CpuFeatures> {
    use engine::kernels::table::{global_alloc, global_dealloc, Hooks, KernelTable, TABLE_VERSION};
    extern "C" {
        fn tvk_init(hooks: *const Hooks) -> *const KernelTable;
    }
    /// # Safety
    /// `len` bytes at `msg`.
    unsafe extern "C" fn panic(msg: *const u8, len: usize) -> ! {
        // SAFETY: the caller's contract.
        write(2, unsafe { core::slice::from_raw_parts(msg, len) });
        exit(101)
    }
    static HOOKS: Hooks = Hooks { version: TABLE_VERSION, alloc: global_alloc, dealloc: global_dealloc, panic };
    // SAFETY: HOOKS lives for the program and keeps the Hooks contract; called once, first.
    let t = unsafe { tvk_init(&HOOKS).as_ref() }?;
    // SAFETY: the linked object's table keeps the KernelTable contract; Linux gives this
    // process its own SSE/AVX state.
    unsafe { CpuFeatures::external(t) }
}

#[cfg(not(kernel_object))]
fn object() -> Option<CpuFeatures> {
    None
}
