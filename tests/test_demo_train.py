"""webui/demo/train.py: the demo model's training code (not the training run).

The smoke preset trains tiny networks for a few steps of each stage; the checkpoint it writes must be a
plain SD 1.x single file that the engine loads and samples from at the native size in its metadata.
Runs are reproducible from the seed, and a run stopped and resumed equals an uninterrupted one bit for bit.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import safetensors.torch
import torch

from webui.demo import train as tr
from webui.engine import detection, families
from webui.engine.checkpoint import load_checkpoint
from webui.engine.files import read_metadata
from webui.engine.residency import Engine
from webui.engine.request import GenerationRequest

ROOT = Path(__file__).resolve().parents[1]
PREFIXES = (tr.UNET_PREFIX, tr.VAE_PREFIX, tr.TEXT_PREFIX)
TIMING_KEYS = ("seconds", "s_per_step", "hardware")  # the only metadata that may differ between equal runs


def quiet(_message: str) -> None:
    pass


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("smoke")
    result = tr.train(tr.TrainConfig.smoke(), folder / "demo.safetensors", folder / "work", progress=False, log=quiet)
    return result


def tensors(path) -> dict[str, torch.Tensor]:
    return safetensors.torch.load_file(str(path))


def assert_same_weights(a, b) -> None:
    ta, tb = tensors(a), tensors(b)
    assert ta.keys() == tb.keys()
    different = [k for k in ta if not torch.equal(ta[k], tb[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


def stable_metadata(path) -> dict:
    meta = dict(read_metadata(path))
    training = json.loads(meta.pop("webui.training"))
    return {**meta, "webui.training": {k: v for k, v in training.items() if k not in TIMING_KEYS}}


def test_smoke_checkpoint_is_an_sd1_file_the_engine_samples_from(smoke_run):
    path = smoke_run.path
    assert path.stat().st_size <= tr.MAX_FILE_BYTES
    sd = tensors(path)
    assert all(k.startswith(PREFIXES) for k in sd)
    assert all(any(k.startswith(p) for k in sd) for p in PREFIXES)
    assert {v.dtype for v in sd.values()} == {torch.float16}
    assert sd[tr.TEXT_PREFIX + "embeddings.token_embedding.weight"].shape[0] == 49408
    assert detection.detect_family(sd).name == "sd1"

    meta = read_metadata(path)
    size = int(meta[tr.NATIVE_SIZE_KEY])
    assert size == 64
    arch = families.arch_overrides(meta)
    config = tr.TrainConfig.smoke()
    assert arch["unet"]["num_heads"] == config.unet_heads
    assert arch["clip"]["num_attention_heads"] == config.text_heads
    training = json.loads(meta["webui.training"])
    assert training["seed"] == 0 and training["steps"] == {"vae": 3, "text": 2, "unet": 4}
    # the live-preview factors fitted on the trained VAE travel in the metadata and are used
    from webui.engine import preview
    factors, bias = preview.latent_rgb("sd1", meta)
    assert factors.shape == (4, 3) and json.loads(meta[preview.LATENT_RGB_KEY])["bias"] == pytest.approx(bias.tolist(), abs=1e-6)

    model = load_checkpoint(path)
    assert model.unet.config == config.unet_config()
    assert model.vae.config == config.vae_config()
    assert model.text_model.config.num_attention_heads == config.text_heads

    engine = Engine("cpu")
    engine.load(path)
    latents = []
    result = engine.generate(GenerationRequest(prompt="a large red circle on a blue background, top left",
                                               negative_prompt="", steps=3, cfg_scale=5, seed=1,
                                               width=size, height=size),
                             progress=lambda p: latents.append(p.denoised))
    assert result.images[0].image.size == (size, size)
    assert torch.isfinite(latents[-1]).all()
    assert torch.isfinite(engine.decode_latents(latents[-1])).all()


def test_same_seed_gives_identical_checkpoint(smoke_run, tmp_path):
    again = tr.train(tr.TrainConfig.smoke(), tmp_path / "again.safetensors", tmp_path / "work", progress=False,
                     log=quiet)
    assert_same_weights(smoke_run.path, again.path)
    assert stable_metadata(smoke_run.path) == stable_metadata(again.path)


def test_other_seed_gives_other_weights(smoke_run, tmp_path):
    other = tr.train(tr.TrainConfig.smoke(seed=1), tmp_path / "other.safetensors", tmp_path / "work",
                     progress=False, log=quiet)
    a, b = tensors(smoke_run.path), tensors(other.path)
    assert not torch.equal(a[tr.UNET_PREFIX + "out.2.weight"], b[tr.UNET_PREFIX + "out.2.weight"])


def test_stopped_and_resumed_run_equals_uninterrupted_run(smoke_run, tmp_path):
    out, work = tmp_path / "resumed.safetensors", tmp_path / "work"
    config = tr.TrainConfig.smoke()
    # stop inside the VAE stage (2 of 3), the text stage (3 VAE + 1 of 2), the UNet stage (3 + 2 + 2 of 4)
    assert tr.train(config, out, work, progress=False, stop_after=2, log=quiet) is None
    state = torch.load(work / tr.STATE_FILE, weights_only=True)
    assert (state["stage"], state["step"]) == ("vae", 2) and "vae_opt" in state
    assert tr.train(config, out, work, resume=True, progress=False, stop_after=4, log=quiet) is None
    state = torch.load(work / tr.STATE_FILE, weights_only=True)
    assert (state["stage"], state["step"]) == ("text", 1) and {"text_opt", "heads"} <= state.keys()
    assert tr.train(config, out, work, resume=True, progress=False, stop_after=7, log=quiet) is None
    state = torch.load(work / tr.STATE_FILE, weights_only=True)
    assert (state["stage"], state["step"]) == ("unet", 2) and {"unet_opt", "ema", "rng"} <= state.keys()
    assert "heads" not in state
    assert not out.exists()
    result = tr.train(config, out, work, resume=True, progress=False, log=quiet)
    assert_same_weights(smoke_run.path, result.path)
    assert stable_metadata(smoke_run.path) == stable_metadata(result.path)


def test_resume_without_state_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no training state"):
        tr.train(tr.TrainConfig.smoke(), tmp_path / "x.safetensors", tmp_path / "empty", resume=True,
                 progress=False, log=quiet)


def test_time_budget_plans_the_step_counts(tmp_path):
    config = tr.TrainConfig.smoke(vae_steps=None, unet_steps=None, minutes=0.02)
    result = tr.train(config, tmp_path / "timed.safetensors", tmp_path / "work", progress=False, log=quiet)
    steps = json.loads(result.metadata["webui.training"])["steps"]
    assert steps["vae"] >= config.calibration_steps + 1 and steps["unet"] >= config.calibration_steps + 1


def test_default_architecture_fits_the_size_limit_and_loads(tmp_path):
    config = tr.TrainConfig()
    models = tr.build_models(config)
    counts = tr.param_counts(models)
    assert counts["text_token_embedding"] == 49408 * config.text_hidden
    path = tmp_path / "default.safetensors"
    tr.export_checkpoint(models, config, path)
    assert path.stat().st_size <= tr.MAX_FILE_BYTES
    model = load_checkpoint(path)
    assert model.unet.config == config.unet_config()
    assert model.unet.config.attention_levels[0] == 0  # attention at the latent's full resolution
    assert model.vae.config == config.vae_config()
    assert model.text_model.config.num_attention_heads == config.text_heads
    assert model.text_model.config.hidden_size == model.unet.config.context_dim == config.text_hidden
    assert read_metadata(path)[tr.NATIVE_SIZE_KEY] == str(config.size)


def test_latent_normalisation_is_exact_and_standardises_latents():
    config = tr.TrainConfig.smoke(stats_images=32)
    vae = tr.build_models(config).vae.eval()
    from webui.demo import dataset as ds
    images = tr._to_tensor(img for img, _, _ in ds.make_dataset(32, tr._derive(config.seed, "stats"), 64))
    with torch.no_grad():
        before = vae.decode(vae.encode(images))
        tr.normalise_latents(vae, config)
        latents = vae.encode(images) * tr.LATENT_SCALE
        after = vae.decode(latents / tr.LATENT_SCALE)
    torch.testing.assert_close(after, before, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(latents.mean(dim=(0, 2, 3)), torch.zeros(4), atol=1e-4, rtol=0)
    torch.testing.assert_close(latents.std(dim=(0, 2, 3)), torch.full((4,), config.latent_std), atol=1e-3, rtol=0)


def test_loss_weights():
    v = tr.loss_weights(tr.TrainConfig(loss_weight="v"))
    assert v.shape == (1000,) and v.mean().item() == pytest.approx(1.0, rel=1e-5)
    assert torch.all(v[1:] > v[:-1])                   # noisier steps weigh more ...
    assert (v[-1] / v[0]).item() > 100                 # ... as 1 / alphas_cumprod does
    eps = tr.loss_weights(tr.TrainConfig(loss_weight="eps"))
    assert torch.all(eps == 1)
    snr = tr.loss_weights(tr.TrainConfig(loss_weight="min-snr", min_snr_gamma=5.0))
    assert snr[-1].item() == 1.0 and snr[0].item() < 0.01


def test_attribute_labels_follow_what_the_caption_says():
    from webui.demo import dataset as ds
    one = ds.Scene("blue", (ds.Obj("circle", "red", "large", "top left"),))
    two = ds.Scene("white", (ds.Obj("square", "red", "small", "top left"), ds.Obj("circle", "green", "large", "top right")))
    labels = tr.attribute_labels([one, one, two], ["a large red circle on a blue background, top left",
                                                   "red circle", "a red square left of a green circle on white"])
    a = tr.ATTRIBUTES
    none = {name: len(options) for name, options in a.items()}
    assert [labels["position"].tolist(), labels["size"].tolist(), labels["background"].tolist()] == [
        [a["position"].index("top left"), none["position"], none["position"]],
        [a["size"].index("large"), none["size"], none["size"]],
        [a["background"].index("blue"), none["background"], a["background"].index("white")]]
    assert labels["colour"].tolist() == [a["colour"].index("red")] * 2 + [none["colour"]]
    assert labels["shape"].tolist() == [a["shape"].index("circle")] * 2 + [none["shape"]]


def test_text_stage_trains_the_encoder_and_the_unet_stage_keeps_it(smoke_run, tmp_path):
    config = tr.TrainConfig.smoke(text_steps=0)
    plain = tr.train(config, tmp_path / "no-text-stage.safetensors", tmp_path / "work", progress=False, log=quiet)
    staged, unstaged = tensors(smoke_run.path), tensors(plain.path)
    key = tr.TEXT_PREFIX + "embeddings.position_embedding.weight"
    assert not torch.equal(staged[key], unstaged[key])
    # text_lr 0: the UNet stage leaves the encoder exactly as initialised (no text stage here)
    init = tr.checkpoint_state_dict(tr.build_models(config))
    text_keys = [k for k in init if k.startswith(tr.TEXT_PREFIX)]
    assert all(torch.equal(unstaged[k], init[k]) for k in text_keys)
    assert not torch.equal(unstaged[tr.UNET_PREFIX + "out.2.weight"], init[tr.UNET_PREFIX + "out.2.weight"])


def test_cross_attention_context_projections_start_larger():
    small, large = (tr.build_models(tr.TrainConfig.smoke(cross_attention_init=f)).unet for f in (1.0, 3.0))
    a, b = dict(small.named_parameters()), dict(large.named_parameters())
    scaled = [k for k in a if not torch.equal(a[k], b[k])]
    assert scaled and all(".attn2.to_k." in k or ".attn2.to_v." in k for k in scaled)
    assert all(torch.allclose(b[k], 3 * a[k]) for k in scaled)


def test_learning_rate_schedule():
    lrs = [tr.lr_factor(s, 1000, 50, 0.1) for s in range(1000)]
    assert lrs[0] == pytest.approx(1 / 50) and lrs[49] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[49:], lrs[50:]))
    assert lrs[-1] == pytest.approx(0.1, abs=1e-4)
    assert tr.lr_factor(0, 20, 50, 0.1) == pytest.approx(0.5)  # warm-up is at most a tenth of the stage


@pytest.mark.parametrize("change, message", [
    (dict(size=60), "multiple of 8"), (dict(vae_ch=48), "multiples of 32"), (dict(unet_heads=3), "unet_heads"),
    (dict(vae_ch_mult=(1, 2, 4)), "4 levels"), (dict(unet_autocast="fp16"), "unet_autocast"),
    (dict(loss_weight="x0"), "loss_weight"), (dict(text_states=0), "text_states"),
])
def test_config_validation(change, message):
    with pytest.raises(ValueError, match=message):
        tr.TrainConfig(**change)


def test_cli_train_demo_smoke(tmp_path):
    out = tmp_path / "cli.safetensors"
    proc = subprocess.run([sys.executable, "app.py", "train-demo", "--smoke", "--quiet", "--seed", "3",
                           "--out", str(out), "--work-dir", str(tmp_path / "work")],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert out.is_file() and (tmp_path / "work" / tr.STATE_FILE).is_file()
    assert json.loads(read_metadata(out)["webui.training"])["seed"] == 3


def test_edge_weights_mark_the_pixels_around_colour_edges():
    image = torch.full((1, 3, 8, 8), -1.0)
    image[:, :, 2:5, 2:5] = 1.0                       # a 3x3 square
    w = tr.edge_weights(image, 4.0)[0, 0]
    assert w.shape == (8, 8) and w[2, 2] == 5.0 and w[3, 3] == 1.0  # on the edge; the square's interior
    assert w[0, 0] == 1.0 and w[7, 7] == 1.0          # far from it
    assert w[1, 1] == 5.0 and w[5, 5] == 5.0          # one pixel outside
    assert torch.all(tr.edge_weights(image, 0.0) == 1.0)
