import numpy as np, json, sys
ref = np.load(sys.argv[1]); meta = json.load(open(sys.argv[1] + '.json'))['meta']
od = sys.argv[2]
def ours(name, il, shape):
    return np.fromfile(f"{od}/{name}-{il}.f32", dtype=np.float32).reshape(shape)
# map attn_out (matmul of attn_output weight) keys
counts = {}; keyof = {}
for name, op, ty, ne, s0 in meta:
    if ty != 'f32': continue
    k = name if name not in counts else f"{name}#{counts[name]}"
    counts[name] = counts.get(name, 0) + 1
    if 'attn_output.weight' in s0: keyof[('attn_out', int(s0.split('.')[1]))] = k
    if 'ffn_down.weight' in s0: pass
nl = 18
T = ref['attn_norm-0'].shape[0]
def rel(a, b): return np.abs(a-b).max(), np.abs(b).max()
for il in range(nl if len(sys.argv) < 4 else int(sys.argv[3])):
    rows = []
    for name, rk in [('attn_norm', f'attn_norm-{il}'), ('Qcur_mm', f'Qcur-{il}'), ('Kcur_mm', f'Kcur-{il}'), ('Vcur', f'Vcur-{il}'),
                     ('kqv_out', f'kqv_out-{il}'), ('attn_out', keyof[('attn_out', il)]), ('sa_out', f'sa_out-{il}'),
                     ('ffn_norm', f'ffn_norm-{il}'), ('ffn_gate', f'ffn_gate-{il}'), ('ffn_up', f'ffn_up-{il}'), ('ffn_geglu', f'ffn_geglu-{il}'),
                     ('ffn_out', f'ffn_out-{il}'), ('l_out', f'l_out-{il}')]:
        r = ref[rk].reshape(T, -1); o = ours(name, il, r.shape)
        d, m = rel(o, r)
        rows.append(f"{name}:{d:.3g}/{m:.3g}")
    print(il, ' '.join(rows))
lo = np.fromfile(f"{od}/logits.f32", dtype=np.float32); rl = ref['_logits']
top = np.argsort(-rl)[:5]
print('logits top5 ref', rl[top], 'ours', lo[top], 'maxdiff', np.abs(lo-rl).max())
