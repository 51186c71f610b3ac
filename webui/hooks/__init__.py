"""The extension hook: discovery, manifests, and what an extension's ``setup(hooks)`` may register.

``manifest``: ``extension.toml`` -> ``Manifest``. ``registry``: ``ExtensionManager`` finds the folders
under ``extensions/``, imports the enabled ones, calls their ``setup(hooks)`` with an ``ExtensionHooks``,
and turns what they registered into per-job ``JobHooks`` for the engine, UI sections, API arguments,
routes and lifecycle callbacks. Every call into an extension is guarded: an extension that fails is
reported (log, UI, API) and skipped; the app and the job go on. See docs/extensions.md.
"""
