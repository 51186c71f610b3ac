"""Example extension (see docs/extensions.md): a UI section, API arguments, a per-job sampling patch,
an infotext key, a lifecycle callback and an HTTP route -- everything the hook offers, in one place.

"Soft contrast" pulls the denoised prediction of every sampling step towards its per-channel mean:
``x0 <- mean + (x0 - mean) * (1 - strength)``. Strength 0 changes nothing.
"""


def setup(hooks):
    stats = {"jobs": 0, "model": None}

    @hooks.ui
    def section(ui):
        import gradio as gr      # only when the web UI is built: the API alone never imports gradio here

        with gr.Row():
            enabled = gr.Checkbox(False, label="Enable", elem_id=f"{ui.kind}_soft_contrast_enabled")
            strength = gr.Slider(0.0, 1.0, value=0.3, step=0.05, label="Strength",
                                 elem_id=f"{ui.kind}_soft_contrast_strength")
        return {"enabled": enabled, "strength": strength}

    @hooks.api_args
    def parse(args):
        # alwayson_scripts: {"Soft contrast": {"args": [true, 0.3]}}
        if len(args) != 2 or not isinstance(args[0], bool) or not isinstance(args[1], (int, float)):
            raise ValueError("Soft contrast takes args [enabled: bool, strength: number]")
        if not 0.0 <= args[1] <= 1.0:
            raise ValueError("Soft contrast: strength must be within 0..1")
        return {"enabled": args[0], "strength": float(args[1])}

    @hooks.on_job
    def prepare(ctx, args):
        if not args.get("enabled"):
            return
        strength = float(args.get("strength", 0.3))
        keep = 1.0 - strength

        def soften(denoised, x, sigma, info):
            mean = denoised.mean(dim=(2, 3), keepdim=True)
            return mean + (denoised - mean) * keep

        ctx.patches.after_cfg.append(soften)
        ctx.infotext["Soft contrast"] = strength
        stats["jobs"] += 1

    @hooks.on_model_loaded
    def remember(model):
        stats["model"] = str(model.path).replace("\\", "/").rsplit("/", 1)[-1]

    @hooks.before_image_saved
    def note(image, params):
        if "Soft contrast" in params:
            params["Soft contrast version"] = "1.0.0"

    def status():
        return dict(stats)

    hooks.route("/status", status)
