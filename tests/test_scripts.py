"""A1111's selectable scripts (webui/jobs/scripts): argument parsing, the runs they ask for, the grids they
draw, and one real X/Y grid through the engine on a tiny checkpoint."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
from PIL import Image

from webui.engine.request import GenerationRequest
from webui.engine.result import ImageRecord
from webui.jobs import infotext
from webui.jobs.output import GenerationOutput
from webui.jobs.scripts import (
    AXIS_OPTIONS,
    GridAnnotation,
    ScriptEnvironment,
    ScriptRegistry,
    axis_options,
    builtin_scripts,
    cmdargs,
    draw_grid_annotations,
    image_grid,
    matrix_prompts,
    parse_lines,
    save_grids,
)
from webui.jobs.scripts.xyz import expand_floats, expand_ints

CHECKPOINTS = ["sd15.safetensors", "sub/dreamshaper_8.safetensors", "tiny.ckpt"]


def env(**kw) -> ScriptEnvironment:
    seeds = itertools.count(1000)
    defaults = dict(checkpoints=lambda: CHECKPOINTS, vaes=lambda: ["vae-ft-mse.safetensors"],
                    styles=lambda: ["cinematic", "sketch"], new_seed=lambda: next(seeds))
    return ScriptEnvironment(**{**defaults, **kw})


def registry(**kw) -> ScriptRegistry:
    return ScriptRegistry.with_builtins(env(**kw))


def xyz_args(x_type=1, x_values="", y_type=0, y_values="", z_type=0, z_values="", **flags):
    """A1111's 19 positional X/Y/Z plot arguments."""
    names = ["draw_legend", "include_lone_images", "include_sub_grids", "no_fixed_seeds", "vary_seeds_x",
             "vary_seeds_y", "vary_seeds_z", "margin_size", "csv_mode"]
    defaults = dict(draw_legend=True, include_lone_images=False, include_sub_grids=False, no_fixed_seeds=False,
                    vary_seeds_x=False, vary_seeds_y=False, vary_seeds_z=False, margin_size=0, csv_mode=True)
    defaults.update(flags)
    return [x_type, x_values, [], y_type, y_values, [], z_type, z_values, []] + [defaults[n] for n in names]


def index_of(label: str, kind: str = "txt2img") -> int:
    return [o.label for o in axis_options(kind)].index(label)


class FakeRunner:
    """Records the runs; each image is a solid colour (distinct per run), with an A1111-like infotext."""

    def __init__(self, size=None):
        self.runs = []
        self.size = size

    def __call__(self, run) -> GenerationOutput:
        self.runs.append(run)
        r = run.request
        n = len(self.runs)
        colour = ((n * 53) % 256, (n * 97) % 256, (n * 151) % 256)
        count = r.batch_size * r.n_iter
        seed = r.seed if r.seed >= 0 else 4242
        images = [Image.new("RGB", self.size or (r.width, r.height), colour) for _ in range(count)]
        texts = [infotext.build(r.prompt, r.negative_prompt, {
            "Steps": r.steps, "Sampler": r.sampler_name, "CFG scale": r.cfg_scale, "Seed": seed + i,
            "Size": f"{r.width}x{r.height}", "Version": "test"}) for i in range(count)]
        return GenerationOutput([ImageRecord(image, seed + i, prompt=r.prompt, negative_prompt=r.negative_prompt,
                                             infotext=text) for i, (image, text) in enumerate(zip(images, texts))])


def request(**kw) -> GenerationRequest:
    return GenerationRequest(**{"prompt": "a red cat", "width": 64, "height": 64, "steps": 2, "seed": 7, **kw})


# ---- X/Y/Z: values ---------------------------------------------------------------------------------
def test_numeric_ranges_as_a1111():
    assert expand_ints(["1-5"]) == [1, 2, 3, 4, 5]
    assert expand_ints(["1-5 (+2)"]) == [1, 3, 5]
    assert expand_ints(["10-1 (-3)"]) == [10, 7, 4]
    assert expand_ints(["10-100 [5]"]) == [10, 32, 55, 77, 100]          # linspace, truncated
    assert expand_ints(["-1", "", "3"]) == ["-1", "3"]                   # a lone negative is a value
    assert expand_floats(["1-2 (+0.5)"]) == [1.0, 1.5, 2.0]
    assert expand_floats(["0-1 [3]"]) == [0.0, 0.5, 1.0]
    assert expand_floats(["7.5"]) == ["7.5"]


def test_axis_values_parse_csv_ranges_and_types():
    xyz = registry().find("X/Y/Z plot", "txt2img")
    o = xyz.parse(xyz_args(index_of("Steps"), "1-3, 7", index_of("CFG Scale"), "5, 7.5 , 1-2 [2]"))
    assert o.x.label == "Steps" and o.x.values == (1, 2, 3, 7)
    assert o.y.label == "CFG Scale" and o.y.values == (5.0, 7.5, 1.0, 2.0)
    assert o.z.label == "Nothing" and o.z.values == (0,)
    o = xyz.parse(xyz_args(index_of("Prompt S/R"), 'red, "blue, dark", green'))
    assert o.x.values == ("red", "blue, dark", "green")
    with pytest.raises(ValueError, match=r"X values \(Steps\): 'ten' is not a whole number"):
        xyz.parse(xyz_args(index_of("Steps"), "10, ten"))
    with pytest.raises(ValueError, match=r"Y values.*no values"):
        xyz.parse(xyz_args(1, "1", index_of("Steps"), " , "))


def test_sampler_and_checkpoint_names_are_checked():
    xyz = registry().find("x/y/z plot", "txt2img")
    o = xyz.parse(xyz_args(index_of("Sampler"), "Euler a, DPM++ 2M, k_lms"))
    assert o.x.values == ("Euler a", "DPM++ 2M", "k_lms")
    with pytest.raises(ValueError, match=r"X values \(Sampler\): unknown sampler 'Eulr'.*available: .*Euler a"):
        xyz.parse(xyz_args(index_of("Sampler"), "Euler, Eulr"))
    o = xyz.parse(xyz_args(index_of("Checkpoint name"), "sd15, dreamshaper_8 [abcdef12]"))
    assert o.x.values == ("sd15", "dreamshaper_8 [abcdef12]") and o.x.option.cost == 1.0
    with pytest.raises(ValueError, match=r"unknown checkpoint 'nope'; available: sd15.safetensors"):
        xyz.parse(xyz_args(index_of("Checkpoint name"), "sd15, nope"))
    with pytest.raises(ValueError, match="unknown schedule type 'Karras2'"):
        xyz.parse(xyz_args(index_of("Schedule type"), "Karras, Karras2"))
    with pytest.raises(ValueError, match="invalid size '512'"):
        xyz.parse(xyz_args(index_of("Size"), "512x768, 512"))


def test_dropdown_values_and_axis_types_by_label():
    xyz = registry().find("X/Y/Z plot", "txt2img")
    args = xyz_args("sampler", "ignored", csv_mode=False)
    args[2] = ["Euler", "DDIM"]
    o = xyz.parse(args)
    assert o.x.label == "Sampler" and o.x.values == ("Euler", "DDIM") and o.x.text == "Euler,DDIM"
    args = xyz_args(index_of("Sampler"), "Euler, Heun", csv_mode=False)   # empty dropdown: the text is used
    assert xyz.parse(args).x.values == ("Euler", "Heun")


def test_axis_indices_follow_the_tab_and_refused_axes_say_why():
    xyz = registry().find("X/Y/Z plot", "img2img")
    assert [o.label for o in axis_options("txt2img")][:8] == [
        "Nothing", "Seed", "Var. seed", "Var. strength", "Steps", "Hires steps", "CFG Scale", "Prompt S/R"]
    assert [o.label for o in axis_options("img2img")][:8] == [
        "Nothing", "Seed", "Var. seed", "Var. strength", "Steps", "CFG Scale", "Image CFG Scale", "Prompt S/R"]
    assert len(axis_options("txt2img")) == 42 and len(axis_options("img2img")) == 41 and len(AXIS_OPTIONS) == 45
    assert xyz.parse(xyz_args(5, "3, 4"), "img2img").x.label == "CFG Scale"      # index 5 on img2img
    assert xyz.parse(xyz_args(index_of("Denoising", "img2img"), "0.2, 0.6"), "img2img").x.values == (0.2, 0.6)
    with pytest.raises(ValueError, match=r"script_args\[0\] \(X type\): the 'Image CFG Scale' axis is not "
                                         "supported: it applies to InstructPix2Pix"):
        xyz.parse(xyz_args(6, "1, 2"), "img2img")
    with pytest.raises(ValueError, match=r"script_args\[3\] \(Y type\): the 'Face restore' axis is not supported"):
        xyz.parse(xyz_args(1, "1", index_of("Face restore", "img2img"), "true"), "img2img")
    t2i = registry().find("X/Y/Z plot", "txt2img")
    runner = FakeRunner()
    t2i.run(request(enable_hr=True), t2i.parse(xyz_args(5, "10, 20", index_of("Hires upscaler"), "Latent, Lanczos")),
            runner)
    assert [(r.request.hr_second_pass_steps, r.request.hr_upscaler) for r in runner.runs] == [
        (10, "Latent"), (20, "Latent"), (10, "Lanczos"), (20, "Lanczos")]
    with pytest.raises(ValueError, match=r"Y values \(Hires upscaler\): unknown upscaler 'Nope'"):
        t2i.parse(xyz_args(5, "10", index_of("Hires upscaler"), "Latent, Nope"))
    with pytest.raises(ValueError, match="out of range 0..40 for img2img"):
        xyz.parse(xyz_args(41, "1"), "img2img")


def test_positional_arguments_defaults_and_limits():
    xyz = registry().find("X/Y/Z plot", "txt2img")
    o = xyz.parse([index_of("Steps"), "1, 2"])       # the rest: A1111's defaults
    assert (o.y.label, o.z.label, o.draw_legend, o.include_lone_images, o.margin_size) == (
        "Nothing", "Nothing", True, False, 0)
    with pytest.raises(ValueError, match="takes at most 18 script_args"):
        xyz.parse(xyz_args() + [True, False])
    with pytest.raises(ValueError, match=r"script_args\[16\] \(Grid margins \(px\)\) must be within 0..500"):
        xyz.parse(xyz_args(1, "1", margin_size=900))
    with pytest.raises(ValueError, match=r"script_args\[9\] \(Draw legend\) must be true or false"):
        xyz.parse(xyz_args(1, "1", draw_legend="maybe"))
    info = xyz.api_info("txt2img")
    assert info["name"] == "x/y/z plot" and info["is_img2img"] is False and len(info["args"]) == 18
    assert info["args"][0]["value"] == "Seed" and "Steps" in info["args"][0]["choices"]
    assert info["args"][16] == {"label": "Grid margins (px)", "value": 0, "minimum": 0, "maximum": 500, "step": 2,
                                "choices": None}


# ---- X/Y/Z: runs ---------------------------------------------------------------------------------
def test_runs_in_a1111_order_with_fields_applied():
    xyz = registry().find("X/Y/Z plot", "txt2img")
    o = xyz.parse(xyz_args(index_of("Steps"), "1-3", index_of("CFG Scale"), "5, 9"))
    runner = FakeRunner()
    result = xyz.run(request(), o, runner)
    assert [(r.request.steps, r.request.cfg_scale) for r in runner.runs] == [
        (1, 5.0), (2, 5.0), (3, 5.0), (1, 9.0), (2, 9.0), (3, 9.0)]
    assert [r.label for r in runner.runs] == [f"{i} out of 6" for i in range(1, 7)]
    assert all(r.save_grid for r in runner.runs)
    assert result.runs == 6 and len(result.images) == 1 and result.index_of_first_image == 1
    assert result.grid_basename == "xyz_grid" and result.save_as_grid == [0]


def test_costly_axis_is_outermost_and_checkpoints_are_resolved():
    xyz = registry().find("X/Y/Z plot", "txt2img")
    o = xyz.parse(xyz_args(index_of("Seed"), "1, 2", index_of("Checkpoint name"), "sd15, dreamshaper_8"))
    runner = FakeRunner()
    xyz.run(request(), o, runner)
    assert [(r.checkpoint, r.request.seed) for r in runner.runs] == [
        ("sd15.safetensors", 1), ("sd15.safetensors", 2),
        ("sub/dreamshaper_8.safetensors", 1), ("sub/dreamshaper_8.safetensors", 2)]
    o = xyz.parse(xyz_args(index_of("Checkpoint name"), "sd15, tiny", index_of("Seed"), "1, 2"))
    runner = FakeRunner()
    xyz.run(request(), o, runner)                       # X is the costly one: X outermost
    assert [(r.checkpoint, r.request.seed) for r in runner.runs] == [
        ("sd15.safetensors", 1), ("sd15.safetensors", 2), ("tiny.ckpt", 1), ("tiny.ckpt", 2)]


def test_prompt_sr_prompt_order_size_styles_vae():
    xyz = registry().find("X/Y/Z plot", "txt2img")
    runner = FakeRunner()
    o = xyz.parse(xyz_args(index_of("Prompt S/R"), "red, blue", index_of("Size"), "64x96"))
    xyz.run(request(negative_prompt="not red"), o, runner)
    assert [(r.request.prompt, r.request.negative_prompt) for r in runner.runs] == [
        ("a red cat", "not red"), ("a blue cat", "not blue")]
    assert {(r.request.width, r.request.height) for r in runner.runs} == {(64, 96)}
    with pytest.raises(ValueError, match="Prompt S/R did not find green"):
        xyz.validate(request(), xyz.parse(xyz_args(index_of("Prompt S/R"), "green, blue")))
    runner = FakeRunner()
    xyz.run(request(), xyz.parse(xyz_args(index_of("Eta"), "0, 1", index_of("Sigma Churn"), "0.5")), runner)
    assert [(r.request.eta, r.request.s_churn) for r in runner.runs] == [(0.0, 0.5), (1.0, 0.5)]
    runner = FakeRunner()
    xyz.run(request(prompt="a cat, red, big"), xyz.parse(xyz_args(index_of("Prompt order"), "red, big")), runner)
    assert [r.request.prompt for r in runner.runs] == ["a cat, red, big", "a cat, big, red"]
    runner = FakeRunner()
    xyz.run(request(), xyz.parse(xyz_args(index_of("Styles"), 'cinematic, "cinematic,sketch"',
                                           index_of("VAE"), "none, vae-ft-mse")), runner, styles=["sketch"])
    assert [(r.styles, r.vae) for r in runner.runs] == [
        (["sketch", "cinematic"], "None"), (["sketch", "cinematic", "sketch"], "None"),
        (["sketch", "cinematic"], "vae-ft-mse.safetensors"),
        (["sketch", "cinematic", "sketch"], "vae-ft-mse.safetensors")]


def test_seeds_fixed_once_for_the_grid_unless_kept():
    xyz = registry().find("X/Y/Z plot", "txt2img")
    o = xyz.parse(xyz_args(index_of("Steps"), "1, 2", index_of("CFG Scale"), "5, 7"))
    runner = FakeRunner()
    result = xyz.run(request(seed=-1), o, runner)
    assert {r.request.seed for r in runner.runs} == {1000}            # one random seed for the whole grid
    assert result.seed == 1000
    runner = FakeRunner()
    xyz.run(request(seed=-1), xyz.parse(xyz_args(index_of("Steps"), "1, 2", no_fixed_seeds=True)), runner)
    assert [r.request.seed for r in runner.runs] == [-1, -1]
    # -1 values of the Seed axis become random seeds (each its own), and the infotext records them
    runner = FakeRunner()
    xyz = registry().find("X/Y/Z plot", "txt2img")
    result = xyz.run(request(), xyz.parse(xyz_args(index_of("Seed"), "-1, -1, 5")), runner)
    assert [r.request.seed for r in runner.runs] == [1000, 1001, 5]
    params = infotext.parse(result.infotexts[0])
    assert params["Script"] == "X/Y/Z plot" and params["X Type"] == "Seed"
    assert params["X Values"] == "-1, -1, 5" and params["Fixed X Values"] == "1000, 1001, 5"
    assert result.infotexts[0].rstrip().endswith("Version: test")
    # the variation seed axis is fixed the same way; the base variation seed too
    runner = FakeRunner()
    xyz = registry().find("X/Y/Z plot", "txt2img")
    result = xyz.run(request(seed=-1), xyz.parse(xyz_args(index_of("Var. seed"), "-1, 3", index_of("Var. strength"),
                                                          "0.1, 0.5")), runner)
    assert [(r.request.seed, r.request.subseed, r.request.subseed_strength) for r in runner.runs] == [
        (1001, 1000, 0.1), (1001, 3, 0.1), (1001, 1000, 0.5), (1001, 3, 0.5)]
    assert infotext.parse(result.infotexts[0])["Fixed X Values"] == "1000, 3"
    # vary seeds: seed + ix + iy * len(xs)
    runner = FakeRunner()
    xyz.run(request(seed=100), xyz.parse(xyz_args(index_of("Steps"), "1, 2", index_of("CFG Scale"), "5, 7",
                                                  vary_seeds_x=True, vary_seeds_y=True)), runner)
    assert [r.request.seed for r in runner.runs] == [100, 101, 102, 103]


def test_planned_runs_are_checked_before_anything_runs():
    def limit(r):
        if r.steps > 150:
            raise ValueError(f"steps must be within 1..150 (got {r.steps})")
    xyz = ScriptRegistry.with_builtins(env(check_request=limit, max_images=8)).find("X/Y/Z plot", "txt2img")
    with pytest.raises(ValueError, match=r"steps must be within 1..150 \(got 200\)"):
        xyz.validate(request(), xyz.parse(xyz_args(index_of("Steps"), "20, 200")))
    with pytest.raises(ValueError, match="steps must be at least 1"):
        xyz.validate(request(), xyz.parse(xyz_args(index_of("Steps"), "0, 1")))
    with pytest.raises(ValueError, match="would generate 9 images; at most 8"):
        xyz.validate(request(), xyz.parse(xyz_args(index_of("Steps"), "1-9")))
    runner = FakeRunner()
    with pytest.raises(ValueError):
        xyz.run(request(), xyz.parse(xyz_args(index_of("Steps"), "20, 200")), runner)
    assert runner.runs == []


# ---- grids ----------------------------------------------------------------------------------------
def _dark(image: Image.Image, box) -> int:
    a = np.asarray(image.crop(box).convert("L"))
    return int((a < 128).sum())


def test_grid_size_and_labels_are_drawn():
    xyz = registry().find("X/Y/Z plot", "txt2img")
    o = xyz.parse(xyz_args(index_of("Steps"), "10, 20", index_of("CFG Scale"), "3, 9"))
    result = xyz.run(request(), o, FakeRunner())
    grid = result.pictures[0]
    pad_left = 64 * 3 // 4
    assert grid.width == 2 * 64 + pad_left and grid.height > 2 * 64
    pad_top = grid.height - 2 * 64
    assert _dark(grid, (pad_left, 0, pad_left + 64, pad_top)) > 0        # "Steps: 10" over column 0
    assert _dark(grid, (pad_left + 64, 0, grid.width, pad_top)) > 0      # "Steps: 20" over column 1
    assert _dark(grid, (0, pad_top, pad_left, pad_top + 64)) > 0         # "CFG Scale: 3.0" left of row 0
    assert _dark(grid, (0, 0, pad_left, pad_top)) == 0                   # the corner stays blank
    # the cells are the runs' images, in X-then-Y order
    def cell(col, row):
        return grid.getpixel((pad_left + col * 64 + 32, pad_top + row * 64 + 32))
    assert len({cell(0, 0), cell(1, 0), cell(0, 1), cell(1, 1)}) == 4
    plain = xyz.run(request(), xyz.parse(xyz_args(index_of("Steps"), "10, 20", index_of("CFG Scale"), "3, 9",
                                                  draw_legend=False)), FakeRunner()).pictures[0]
    assert plain.size == (128, 128)
    margin = xyz.run(request(), xyz.parse(xyz_args(index_of("Steps"), "10, 20", index_of("CFG Scale"), "3, 9",
                                                   margin_size=10)), FakeRunner()).pictures[0]
    assert margin.size == (grid.width + 10, grid.height + 10)


def test_longer_labels_wrap_and_draw_more_text():
    cells = image_grid([Image.new("RGB", (128, 128), "gray")] * 2, rows=1)
    short = draw_grid_annotations(cells, 128, 128, [[GridAnnotation("a")], [GridAnnotation("b")]],
                                  [[GridAnnotation("")]])
    long = draw_grid_annotations(cells, 128, 128, [[GridAnnotation("a much longer label that has to wrap")],
                                                   [GridAnnotation("b")]], [[GridAnnotation("")]])
    assert short.width == long.width == 256                             # no row labels: no left band
    assert long.height > short.height > 128                             # wrapped lines: a taller band
    def top(im):
        return _dark(im, (0, 0, 128, im.height - 128))
    assert top(long) > 3 * top(short)
    inactive = draw_grid_annotations(cells, 128, 128, [[GridAnnotation("a", False)], [GridAnnotation("b")]],
                                     [[GridAnnotation("")]])
    grey = np.asarray(inactive.crop((0, 0, 128, inactive.height - 128)))
    assert ((grey == 153).all(axis=-1)).any()                           # struck through in A1111's grey


def test_z_axis_gives_a_grid_per_value_and_one_of_them():
    xyz = registry().find("X/Y/Z plot", "txt2img")
    args = dict(x_type=index_of("Steps"), x_values="1, 2", z_type=index_of("CFG Scale"), z_values="3, 5, 7")
    runner = FakeRunner()
    result = xyz.run(request(), xyz.parse(xyz_args(**args)), runner)
    assert [(r.request.cfg_scale, r.request.steps) for r in runner.runs] == [
        (3.0, 1), (3.0, 2), (5.0, 1), (5.0, 2), (7.0, 1), (7.0, 2)]
    assert len(result.images) == 1
    full = xyz.run(request(), xyz.parse(xyz_args(**args, include_sub_grids=True, include_lone_images=True)),
                   FakeRunner())
    main, subs, lone = full.pictures[0], full.pictures[1:4], full.pictures[4:]
    assert len(lone) == 6 and full.grid_count == 4 and full.save_as_grid == [0, 1, 2, 3]
    assert all(s.size == subs[0].size for s in subs)
    assert main.width == 3 * subs[0].width and main.height > subs[0].height      # a title band for Z
    assert main.size == result.pictures[0].size
    main_params, sub_params = infotext.parse(full.infotexts[0]), infotext.parse(full.infotexts[2])
    assert main_params["Z Type"] == "CFG Scale" and main_params["Z Values"] == "3, 5, 7"
    assert "Z Type" not in sub_params and sub_params["X Type"] == "Steps" and sub_params["CFG scale"] == "5"
    assert [s for s in full.seeds] == [7, 7, 7, 7] + [7] * 6
    # the lone images are the cells, X-then-Y-then-Z
    assert [im.getpixel((1, 1)) for im in lone] == [
        Image.new("RGB", (1, 1), ((n * 53) % 256, (n * 97) % 256, (n * 151) % 256)).getpixel((0, 0))
        for n in range(1, 7)]


def test_batches_make_grid_cells_and_interrupts_leave_black_cells():
    xyz = registry().find("X/Y/Z plot", "txt2img")
    runner = FakeRunner()
    result = xyz.run(request(batch_size=2, n_iter=2), xyz.parse(xyz_args(index_of("Steps"), "1, 2",
                                                                          draw_legend=False)), runner)
    assert result.pictures[0].size == (2 * 128, 128)                     # each cell: the run's 2x2 grid

    class Interrupting(FakeRunner):
        def __call__(self, run):
            out = super().__call__(run)
            out.interrupted = len(self.runs) == 2
            return out
    runner = Interrupting()
    result = xyz.run(request(), xyz.parse(xyz_args(index_of("Steps"), "1-4", draw_legend=False,
                                                   include_lone_images=True)), runner)
    assert len(runner.runs) == 2 and result.interrupted
    assert result.pictures[0].size == (256, 64)
    assert result.pictures[3].getpixel((5, 5)) == (0, 0, 0) and result.pictures[4].getpixel((5, 5)) == (0, 0, 0)
    stopped = xyz.run(request(), xyz.parse(xyz_args(index_of("Steps"), "1-4")), FakeRunner(), stop=lambda: True)
    assert stopped.images == [] and stopped.interrupted


def test_grids_are_saved_with_a1111_names(tmp_path):
    xyz = registry().find("X/Y/Z plot", "txt2img")
    o = xyz.parse(xyz_args(index_of("Steps"), "1, 2", z_type=index_of("CFG Scale"), z_values="3, 5",
                           include_sub_grids=True))
    result = xyz.run(request(seed=1234), o, FakeRunner())
    paths = save_grids(result, tmp_path)
    assert [p.name for p in paths] == ["xyz_grid-0000-1234.png", "xyz_grid-0001-1234.png", "xyz_grid-0002-1234.png"]
    assert save_grids(result, tmp_path)[0].name == "xyz_grid-0003-1234.png"        # never overwritten
    with Image.open(paths[0]) as saved:
        assert saved.size == result.pictures[0].size
        assert "X/Y/Z plot" in saved.info["parameters"]


# ---- prompt matrix ----------------------------------------------------------------------------------
def test_prompt_matrix_combinations_in_a1111_order():
    parts, prompts = matrix_prompts("a cat|red|big,")
    assert parts == ["a cat", "red", "big,"]
    assert prompts == ["a cat", "a cat, red", "a cat, big", "a cat, red, big"]
    assert matrix_prompts("a cat | red | big")[1][1] == "a cat , red"       # the first part is kept as written
    assert matrix_prompts("a cat|red|big", put_at_start=True)[1] == ["a cat", "red, a cat", "big, a cat",
                                                                   "red, big, a cat"]
    assert matrix_prompts("x|a|b|c", delimiter=" ")[1] == ["x", "x a", "x b", "x a b", "x c", "x a c", "x b c",
                                                           "x a b c"]


def test_prompt_matrix_runs_and_grid():
    pm = registry().find("prompt matrix", "txt2img")
    assert pm.parse([]) == pm.parse([False, False, "positive", "comma", 0])
    with pytest.raises(ValueError, match=r"script_args\[2\] \(Select prompt\) must be one of positive, negative"):
        pm.parse([False, False, "both"])
    runner = FakeRunner()
    result = pm.run(request(prompt="a cat|red|big", seed=-1), pm.parse([False, True]), runner)
    assert [r.request.prompt for r in runner.runs] == ["a cat", "a cat, red", "a cat, big", "a cat, red, big"]
    assert [r.request.seed for r in runner.runs] == [1000, 1001, 1002, 1003]      # different seeds
    assert not any(r.save_grid for r in runner.runs)
    assert len(result.images) == 5 and result.index_of_first_image == 1 and result.save_as_grid == [0]
    assert result.grid_basename == "prompt_matrix" and result.infotexts[0] == result.infotexts[1]
    grid = result.pictures[0]
    pad_left = 64 * 3 // 4
    assert grid.width == 2 * 64 + pad_left and grid.height > 128
    assert _dark(grid, (pad_left, 0, grid.width, grid.height - 128)) > 0
    runner = FakeRunner()
    pm.run(request(prompt="p", negative_prompt="ugly|blurry"), pm.parse([True, False, "negative", "space"]), runner)
    assert [(r.request.prompt, r.request.negative_prompt, r.request.seed) for r in runner.runs] == [
        ("p", "ugly", 7), ("p", "blurry ugly", 7)]


# ---- prompts from file ---------------------------------------------------------------------------
def test_prompt_lines_parse_a1111_command_lines():
    assert cmdargs('--prompt "a red cat" --steps 5 --seed 3 --negative_prompt ugly blurry --cfg_scale 6.5') == {
        "prompt": "a red cat", "steps": 5, "seed": 3, "negative_prompt": "ugly blurry", "cfg_scale": 6.5}
    assert cmdargs('--prompt "it\'s" --restore_faces TRUE') == {"prompt": "it's", "restore_faces": False}
    jobs = parse_lines("a plain prompt -- with dashes\n\n  --prompt 'x' --width 512 --sampler_name \"Euler a\"\n")
    assert [(j.number, j.args) for j in jobs] == [(1, {"prompt": "a plain prompt -- with dashes"}),
                                                  (3, {"prompt": "x", "width": 512, "sampler_name": "Euler a"})]
    with pytest.raises(ValueError, match=r"line 2 .*unknown commandline option: --foo"):
        parse_lines("ok\n--prompt x --foo 1")
    with pytest.raises(ValueError, match=r"line 1 .*bad value for --steps: 'many'"):
        parse_lines("--prompt x --steps many")
    with pytest.raises(ValueError, match="missing argument for command line option --seed"):
        parse_lines("--prompt x --seed")
    with pytest.raises(ValueError, match="--outpath_samples is not allowed"):
        parse_lines("--prompt x --outpath_samples /etc")
    with pytest.raises(ValueError, match="unknown sampler 'Eulr'"):
        parse_lines("--prompt x --sampler_name Eulr")
    assert parse_lines("--prompt x --subseed 5 --subseed_strength 0.25")[0].args == {
        "prompt": "x", "subseed": 5, "subseed_strength": 0.25}
    pff = registry().find("Prompts from file or textbox", "txt2img")
    runner = FakeRunner()
    pff.run(request(), pff.parse([False, False, "start", "--prompt x --tiling true\ny"]), runner)
    assert [r.request.tiling for r in runner.runs] == [True, False]
    with pytest.raises(ValueError, match="No closing quotation"):
        parse_lines('--prompt "x')


def test_prompts_from_file_runs_and_seeds():
    pff = registry().find("Prompts from file or textbox", "txt2img")
    text = "first\n--prompt second --steps 5 --seed 42\n--negative_prompt ugly --sd_model tiny --styles sketch\n"
    runner = FakeRunner()
    result = pff.run(request(prompt="", seed=10), pff.parse([True, False, "start", text]), runner, styles=["cinematic"])
    assert [(r.request.prompt, r.request.steps, r.request.seed) for r in runner.runs] == [
        ("first", 2, 10), ("second", 5, 42), ("", 2, 12)]              # iterate: +batch*n_iter per line
    assert runner.runs[2].request.negative_prompt == "ugly" and runner.runs[2].checkpoint == "tiny.ckpt"
    assert runner.runs[2].styles == ["cinematic", "sketch"] and not runner.runs[0].save_grid
    assert len(result.images) == 3 and result.index_of_first_image == 0 and result.seeds == [10, 42, 12]
    runner = FakeRunner()
    pff.run(request(prompt="base", seed=-1), pff.parse([False, True, "end", "a\nb"]), runner)
    assert [(r.request.prompt, r.request.seed) for r in runner.runs] == [("base a", 1000), ("base b", 1000)]
    runner = FakeRunner()
    pff.run(request(prompt="base", seed=-1), pff.parse([False, False, "a\nb"]), runner)   # A1111 < 1.7 layout
    assert [(r.request.prompt, r.request.seed) for r in runner.runs] == [("a base", -1), ("b base", -1)]
    with pytest.raises(ValueError, match=r"script_args\[3\] \(List of prompt inputs\): no prompts"):
        pff.parse([False, False, "start", "\n \n"])
    with pytest.raises(ValueError, match=r"line 1 .*unknown checkpoint 'nope'"):
        pff.parse([False, False, "start", "--sd_model nope"])


# ---- registry -----------------------------------------------------------------------------------------
def test_registry_lookup_and_extensions():
    reg = ScriptRegistry(builtin_scripts(env()))
    assert reg.names("txt2img") == ["prompt matrix", "prompts from file or textbox", "x/y/z plot"]
    assert reg.names("img2img") == ["poor man's outpainting", "prompt matrix", "prompts from file or textbox",
                                    "sd upscale", "x/y/z plot"]
    assert reg.find("X/Y/Z PLOT", "img2img").title == "X/Y/Z plot"
    with pytest.raises(ValueError, match="Script 'Loopback' not found for img2img; available: \"Poor man's"):
        reg.find("Loopback", "img2img")
    info = reg.script_info()
    assert [(i["name"], i["is_img2img"]) for i in info][:3] == [
        ("prompt matrix", False), ("prompts from file or textbox", False), ("x/y/z plot", False)]
    assert len(info) == 8 and all(i["is_alwayson"] is False for i in info)

    class Mine(type(reg.find("prompt matrix", "txt2img"))):
        title = "My Script"
        kinds = ("img2img",)
    reg.add(Mine())
    assert reg.names("img2img")[-1] == "my script" and "my script" not in reg.names("txt2img")
    with pytest.raises(ValueError, match="already registered"):
        reg.add(Mine())
    assert builtin_scripts()[0] is not builtin_scripts()[0]              # no shared instances


# ---- one real grid through the engine ---------------------------------------------------------------------
def test_real_xy_grid_on_a_tiny_checkpoint(tmp_path):
    from tests.tiny import tiny_checkpoint
    from webui.engine.residency import Engine
    from webui.jobs.parameters import ModelInfo, infotexts

    engine = Engine("cpu", "full")
    engine.load(tiny_checkpoint(tmp_path / "tiny.safetensors"))
    model = ModelInfo("tiny")

    def runner(run):
        result = engine.generate(run.request)
        return GenerationOutput([r.replace(infotext=t) for r, t in zip(result.images, infotexts(run.request, result,
                                                                                               model))],
                                result.interrupted)

    xyz = registry().find("X/Y/Z plot", "txt2img")
    req = GenerationRequest(prompt="a red circle", width=64, height=64, steps=2, seed=-1)
    o = xyz.parse(xyz_args(index_of("Seed"), "1, 2", index_of("CFG Scale"), "1, 7", draw_legend=False,
                           include_lone_images=True))
    result = xyz.run(req, o, runner)
    grid = result.pictures[0]
    assert grid.size == (128, 128) and result.runs == 4 and len(result.images) == 5
    quads = [np.asarray(grid.crop((c * 64, r * 64, c * 64 + 64, r * 64 + 64)), dtype=np.int16)
             for r in range(2) for c in range(2)]
    for a, b in itertools.combinations(quads, 2):
        assert np.abs(a - b).mean() > 0.5                               # four distinct cells
    for quad, lone in zip(quads, result.pictures[1:]):
        assert np.array_equal(quad, np.asarray(lone, dtype=np.int16))
    assert [infotext.parse(t)["Seed"] for t in result.infotexts[1:]] == ["1", "2", "1", "2"]
    params = infotext.parse(result.infotexts[0])
    assert params["X Type"] == "Seed" and params["Y Type"] == "CFG Scale" and params["Model"] == "tiny"
