#!/usr/bin/env python3
"""Dumps llama.cpp's intermediate f32 tensors for one prompt (prefill) through the ggml eval
callback, for comparison with the engine's `examples/trace.rs`.

Usage: PYTHONPATH=<llama-cpp-python dir> scripts/engine/dump_llama_tensors.py MODEL PROMPT OUT.npz [THREADS]
Writes OUT.npz (tensors by graph name, repeated names get #1, #2, ...; `_logits` = last
token's logits) and OUT.npz.json (token ids and, per graph node: name, op, type, shape, src0).
The ggml_tensor field offsets used (type @0, ne @16, src[0] @152) are those of ggml 0.25.
"""
import ctypes, sys, json, numpy as np
import llama_cpp as L
model_path = sys.argv[1]; prompt = sys.argv[2]; out = sys.argv[3]
nthreads = int(sys.argv[4]) if len(sys.argv) > 4 else 2
base = ctypes.CDLL(L.__file__.rsplit('/',1)[0] + '/lib/libggml-base.so')
base.ggml_get_name.restype = ctypes.c_char_p; base.ggml_get_name.argtypes=[ctypes.c_void_p]
base.ggml_get_data.restype = ctypes.c_void_p; base.ggml_get_data.argtypes=[ctypes.c_void_p]
base.ggml_nelements.restype = ctypes.c_int64; base.ggml_nelements.argtypes=[ctypes.c_void_p]
base.ggml_is_contiguous.restype = ctypes.c_bool; base.ggml_is_contiguous.argtypes=[ctypes.c_void_p]
base.ggml_op_desc.restype = ctypes.c_char_p; base.ggml_op_desc.argtypes=[ctypes.c_void_p]
base.ggml_type_name.restype = ctypes.c_char_p; base.ggml_type_name.argtypes=[ctypes.c_int]
dumps = {}; meta = []
def cb(t, ask, ud):
    if ask: return True
    name = base.ggml_get_name(t).decode()
    ty = ctypes.c_int.from_address(t).value
    ne = [ctypes.c_int64.from_address(t + 16 + 8*i).value for i in range(4)]
    src0 = ctypes.c_void_p.from_address(t + 152).value
    s0 = ''
    if src0:
        s0 = base.ggml_get_name(src0).decode() + ':' + base.ggml_type_name(ctypes.c_int.from_address(src0).value).decode()
    meta.append((name, base.ggml_op_desc(t).decode(), base.ggml_type_name(ty).decode(), ne, s0))
    if ty == 0 and base.ggml_is_contiguous(t):
        n = base.ggml_nelements(t)
        a = np.ctypeslib.as_array((ctypes.c_float * n).from_address(base.ggml_get_data(t))).copy()
        key = name; k = 1
        while key in dumps: key = f"{name}#{k}"; k += 1
        dumps[key] = a.reshape([x for x in ne[::-1] if True]).squeeze()
    return True
CB = L.ggml_backend_sched_eval_callback(cb)
L.llama_backend_init()
mp = L.llama_model_default_params()
model = L.llama_model_load_from_file(model_path.encode(), mp)
cp = L.llama_context_default_params()
cp.n_ctx = 512; cp.n_batch = 512; cp.n_ubatch = 512; cp.n_threads = nthreads; cp.n_threads_batch = nthreads
cp.cb_eval = CB; cp.cb_eval_user_data = None
try: cp.flash_attn_type = 0
except Exception: pass
ctx = L.llama_init_from_model(model, cp)
vocab = L.llama_model_get_vocab(model)
buf = (L.llama_token * 512)()
n = L.llama_tokenize(vocab, prompt.encode(), len(prompt.encode()), buf, 512, True, True)
toks = list(buf[:n])
batch = L.llama_batch_get_one(buf, n)
assert L.llama_decode(ctx, batch) == 0
nv = L.llama_vocab_n_tokens(vocab)
logits = np.ctypeslib.as_array(L.llama_get_logits_ith(ctx, -1), shape=(nv,)).copy()
dumps['_logits'] = logits
np.savez(out, **dumps)
json.dump({'tokens': toks, 'meta': meta}, open(out + '.json', 'w'))
print(toks, logits.argmax(), logits.max())
