# Diagnostic used for docs/demo-model-notes.md (issue 3), kept to reproduce the findings; not part of the app.
# Usage: python docs/wip/learn_position_probe.py '{"steps":700,"tmin":900,"unet_lr":1e-3,"text_lr":1e-3,"oracle":2}'
# Needs a VAE training state at /tmp/probe/state/state.pt (any `train-demo` work dir's state.pt after the
# VAE stage). Trains the UNet (+ text encoder) on timesteps >= tmin and prints, every `every` steps, how much
# the x0 prediction at t=999 differs between "... top left" and "... bottom right" (ideal: about 6) and
# between a red and a blue object. oracle=1/2 replaces the text encoder by fixed random vectors per position
# (and colour, background); emb_std / ln_scale / bias_std / pads change initialisations.
# pretext=N: first N steps train the text encoder alone to classify position/colour/shape/background from
# the mean of its last 40 token states (fixed_heads=1: frozen random linear heads, so the features must grow).
# ORACLE_SCALE: size of the oracle vectors (3 -> norm ~34: learned; 1 -> norm ~11: not learned).
import sys, time, json, torch, numpy as np
sys.path.insert(0,'/work/main')
from webui.demo import train as tr, dataset as ds
from webui.engine.text import TextEncoder, load_tokenizer
from webui.engine.sampling.schedules import sd_alphas_cumprod
kw = json.loads(sys.argv[1]); kw2 = dict(bias_std=kw.pop('bias_std', 0), oracle=kw.pop('oracle', 0), every=kw.pop('every', 100), emb_std=kw.pop('emb_std', 0), ln_scale=kw.pop('ln_scale', 0), pads=kw.pop('pads', 0), pretext=kw.pop('pretext', 0), fixed_heads=kw.pop('fixed_heads', 0), kv_scale=kw.pop('kv_scale', 0), q_scale=kw.pop('q_scale', 0)); steps = kw.pop('steps'); tmin = kw.pop('tmin')
src = torch.load('/tmp/probe/state/state.pt', weights_only=True)
cfg = tr.TrainConfig.from_json(src['config']); cfg.latent_std = kw.pop('latent_std', 0.5); cfg.pool_size = 2048
for k, v in kw.items(): setattr(cfg, k, v)
m = tr.build_models(cfg);
bias_std = kw2.get('bias_std', 0)
for name, mod in m.unet.named_modules():
    if name.endswith('attn2.to_k') or name.endswith('attn2.to_v'):
        if kw2.get('kv_scale'): mod.weight.data *= kw2['kv_scale']
    if name.endswith('attn2.to_q') and kw2.get('q_scale'): mod.weight.data *= kw2['q_scale']
if kw2.get('ln_scale'):
    m.text.final_layer_norm.weight.data.fill_(kw2['ln_scale'])
if kw2.get('emb_std'):
    torch.manual_seed(2); e = m.text.get_input_embeddings(); e.weight.data.normal_(0, kw2['emb_std'])
if bias_std:
    torch.manual_seed(1); m.unet.input_blocks[0][0].bias.data = torch.randn_like(m.unet.input_blocks[0][0].bias) * bias_std
m.vae.load_state_dict(src['vae']); tr.normalise_latents(m.vae, cfg); m.vae.eval()
pool = tr._Pool(cfg, m.vae); pool.load(0)
unet, text = m.unet.train(), m.text.train()
enc = TextEncoder(text, load_tokenizer())
opt = torch.optim.AdamW(tr._param_groups([(unet, cfg.unet_lr), (text, cfg.text_lr)], 0.01), betas=(0.9, 0.99))
acp = sd_alphas_cumprod().float(); w = 1/acp; w = w / w[tmin:].mean()
g = torch.Generator().manual_seed(0)
ORACLE_SCALE = 1.0
if kw2.get('pretext'):
    heads = torch.nn.ModuleDict({k: torch.nn.Linear(128, n + 1) for k, n in (('position', 5), ('colour', 8), ('shape', 4), ('background', 8))})
    if kw2.get('fixed_heads'):
        for hd in heads.values():
            torch.nn.init.normal_(hd.weight, 0, 1 / 128 ** 0.5); hd.bias.data.zero_(); hd.requires_grad_(False)
    popt = torch.optim.AdamW([p for p in list(text.parameters()) + list(heads.parameters()) if p.requires_grad], lr=1e-3)
    names = {'position': list(ds.POSITIONS), 'colour': list(ds.COLOURS), 'shape': list(ds.SHAPES), 'background': list(ds.COLOURS)}
    for pstep in range(kw2['pretext']):
        idx = torch.randint(0, 2048, (64,), generator=g)
        caps, labels = [], {k: [] for k in heads}
        for i in idx.tolist():
            sc = pool.scenes[i]
            cap = ds.caption(sc, np.random.default_rng([10**6 + pstep, i])); caps.append(cap)
            o = sc.objects[0]
            for k in heads:
                if len(sc.objects) != 1: labels[k].append(len(names[k])); continue
                val = sc.background if k == 'background' else getattr(o, k)
                word_said = val in cap if k != 'background' else (val + ' background' in cap or 'on ' + val in cap or 'against' in cap and val in cap.split('against')[-1])
                labels[k].append(names[k].index(val) if word_said else len(names[k]))
        h = enc.encode(caps)[:, -40:].mean(1)
        ploss = sum(torch.nn.functional.cross_entropy(heads[k](h), torch.tensor(labels[k])) for k in heads)
        popt.zero_grad(); ploss.backward(); popt.step()
        if pstep % 100 == 0 or pstep == kw2['pretext'] - 1: print('pretext', pstep, round(ploss.item(), 3), flush=True)
ORACLE = torch.randn(5, 128, generator=torch.Generator().manual_seed(9)) * ORACLE_SCALE
PADS = torch.randn(1, 1, 128, generator=torch.Generator().manual_seed(12)) * 3
COL = torch.randn(8, 128, generator=torch.Generator().manual_seed(10)) * ORACLE_SCALE
BG = torch.randn(8, 128, generator=torch.Generator().manual_seed(11)) * ORACLE_SCALE
t0 = time.time()
for step in range(steps):
    idx = torch.randint(0, 2048, (32,), generator=g)
    z0 = (pool.mean[idx] + pool.std[idx]*torch.randn(32,4,8,8, generator=g)) * tr.LATENT_SCALE
    t = torch.randint(tmin, 1000, (32,), generator=g)
    noise = torch.randn(z0.shape, generator=g)
    xt = acp[t].sqrt().view(-1,1,1,1)*z0 + (1-acp[t]).sqrt().view(-1,1,1,1)*noise
    caps = [ds.caption(pool.scenes[i], np.random.default_rng([step, int(i)])) for i in idx.tolist()]
    if kw2.get('oracle'):
        ctx = PADS.expand(32, 77, 128).clone() if kw2.get('pads') else torch.zeros(32, 77, 128)
        for j, i in enumerate(idx.tolist()):
            sc = pool.scenes[i]
            if len(sc.objects) == 1:
                o = sc.objects[0]
                ctx[j, 0] = ORACLE[list(ds.POSITIONS).index(o.position)]
                if kw2['oracle'] == 2:
                    ctx[j, 1] = COL[list(ds.COLOURS).index(o.colour)]; ctx[j, 2] = BG[list(ds.COLOURS).index(sc.background)]
    else:
        ctx = enc.encode(caps)
    for gr in opt.param_groups: gr['lr'] = gr['base_lr'] * tr.lr_factor(step, steps, 200, 0.05)
    pred = unet(xt, t, ctx)
    loss = ((pred-noise).square().mean((1,2,3)) * w[t]).mean()
    opt.zero_grad(); loss.backward(); torch.nn.utils.clip_grad_norm_([p for mm in (unet,text) for p in mm.parameters()], 1.0); opt.step()
    if step % int(kw2.get('every') or 100) == 0 or step == steps-1:
        unet.eval(); text.eval()
        with torch.no_grad():
            x = torch.randn(16,4,8,8, generator=torch.Generator().manual_seed(5))
            maps = {}
            for pos in ('top left', 'bottom right'):
                if kw2.get('oracle'):
                    c = (PADS.expand(16, 77, 128).clone() if kw2.get('pads') else torch.zeros(16, 77, 128)); c[:, 0] = ORACLE[list(ds.POSITIONS).index(pos)]; c[:, 1] = COL[0]; c[:, 2] = BG[6]
                else:
                    c = enc.encode([f'a large red square on a white background, {pos}']*16)
                e = unet(x, torch.full((16,),999), c)
                maps[pos] = ((x - (1-acp[999]).sqrt()*e)/acp[999].sqrt()).mean(0)
            d = (maps['top left']-maps['bottom right'])  # (4,8,8)
            c2 = enc.encode(['a large blue square on a white background, top left']*16)
            e2 = unet(x, torch.full((16,),999), c2)
            cdiff = (((x - (1-acp[999]).sqrt()*e2)/acp[999].sqrt()).mean(0) - maps['top left']).norm().item()
            quad = lambda a: a[:, :4, :4].norm() - a[:, 4:, 4:].norm()
            print(step, f'red-blue diff {cdiff:.3f}', f'loss {loss.item():.4f}', 'TL-BR x0 diff norm', round(d.norm().item(),3), 'TL quad - BR quad of diff', round(quad(d).item(),3), f'{time.time()-t0:.0f}s', flush=True)
        unet.train(); text.train()

torch.save({'unet': unet.state_dict(), 'text': text.state_dict()}, '/tmp/longrun_weights.pt')
