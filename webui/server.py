"""``python app.py``: serve the web UI (A1111's flags).

The page is served at once; the checkpoint loads in the background as the first queued job, and the page
shows its status. Settings changed in the UI are kept in ``--ui-settings-file`` (default
``<data-dir>/config.json``, as A1111's).
"""
from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path

from . import __version__
from .flags import add_engine_args, add_folder_args, compile_cache, engine_options, extensions_folder, folders

LISTEN_WARNING = """
WARNING: --listen without --gradio-auth: anyone who can reach this machine on port {port} can use the UI,
its GPU and its files of generated images. Add --gradio-auth user:password (or --gradio-auth-path FILE).
"""

API_WARNING = """
WARNING: --listen with the API and no --api-auth: anyone who can reach this machine on port {port} can
generate and read settings through /sdapi/v1. Add --api-auth user:password.
"""


def add_server_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("web UI (python app.py with no subcommand)")
    g.add_argument("--listen", action="store_true", help="serve on 0.0.0.0 (the LAN), not only 127.0.0.1")
    g.add_argument("--port", type=int, help="port (default 7860; 7861 with --nowebui, as A1111)")
    g.add_argument("--api", action="store_true", help="serve A1111's /sdapi/v1 API beside the UI (docs at /docs)")
    g.add_argument("--nowebui", action="store_true", help="serve the API only, no UI")
    g.add_argument("--api-auth", metavar="USER:PASS[,USER2:PASS2]", help="HTTP Basic login for every API route")
    g.add_argument("--cors-allow-origins", metavar="ORIGIN[,ORIGIN2]",
                   help="origins allowed to call the API from a browser (default: none)")
    g.add_argument("--max-size", type=int, default=2048, help="largest width/height an API request may ask for")
    g.add_argument("--max-batch-images", type=int, default=64, help="largest batch_size x n_iter per API request")
    g.add_argument("--gradio-auth", metavar="USER:PASS[,USER2:PASS2]", help="require a login for the UI")
    g.add_argument("--gradio-auth-path", type=Path, metavar="FILE",
                   help="file of user:password entries (comma- or line-separated)")
    g.add_argument("--ui-settings-file", type=Path, help="settings file (default: <data-dir>/config.json)")
    g.add_argument("--theme", choices=("light", "dark"), help="force the light or dark theme")
    add_folder_args(p.add_argument_group("folders (the server and the subcommands)"))
    add_engine_args(p.add_argument_group("engine (the server and the subcommands)"))


def listen_warning(listen: bool, auth: list, port: int) -> str | None:
    """The loud warning for a LAN-visible UI without a login."""
    return LISTEN_WARNING.format(port=port) if listen and not auth else None


def api_warning(listen: bool, api_auth: list, port: int) -> str | None:
    """The same for the API."""
    return API_WARNING.format(port=port) if listen and not api_auth else None


def parse_auth(text: str | None, path: Path | None) -> list[tuple[str, str]]:
    """``user:pass,user2:pass2`` (and the file's entries, one per line or comma-separated) -> pairs."""
    entries = []
    if text:
        entries += text.split(",")
    if path is not None:
        try:
            content = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ValueError(f"cannot read --gradio-auth-path {path}: {exc}") from None
        entries += [part for line in content.splitlines() for part in line.split(",")]
    pairs = []
    for entry in entries:
        entry = entry.strip()
        if not entry:
            continue
        user, sep, password = entry.partition(":")
        if not sep or not user or not password:
            raise ValueError(f"auth entry {entry.split(':')[0]!r}...: expected user:password")
        pairs.append((user, password))
    return pairs


def extension_routers(extensions) -> list:
    """One router per extension with routes, at ``/extensions-api/<name>``; a route that raises answers 500
    with the message, and the extension's error list records it."""
    from fastapi import APIRouter

    from .api.errors import error_responses

    routers = []
    for ext in extensions.active():
        for prefix, at_root in ((f"/extensions-api/{ext.name}", False), (f"/{ext.name}", True)):
            routes = [(path, fn, methods) for path, fn, methods, root in ext.hooks.routes if root == at_root]
            if not routes:
                continue
            if at_root and ext.name.lower() in RESERVED_ROOTS:
                extensions.guard(ext, _raise, "routes")(
                    ValueError(f"/{ext.name}/ is the app's own path; its root routes are not served"))
                continue
            router = APIRouter(prefix=prefix, tags=[f"extension: {ext.name}"])
            for path, fn, methods in routes:
                # 404: the extension is disabled; 500: its route raised; 400/422: a body or parameter it refuses
                router.add_api_route(path, _route_guard(extensions, ext, fn), methods=list(methods),
                                     responses=error_responses(400, 404, 422, 500))
            routers.append(router)
    return routers


RESERVED_ROOTS = frozenset({
    "sdapi", "docs", "openapi.json", "extensions-api", "gradio_api", "assets", "static", "file", "login", "logout",
    "config", "queue", "info", "upload", "run", "heartbeat", "theme.css", "favicon.ico", "manifest.json",
    "custom_component", "svelte", "monitoring", "proxy", "redoc", "token", "app_id", "dev"})


def extension_root_prefixes(extensions) -> tuple[str, ...]:
    """``/<name>/`` of every extension serving routes at the root: --api-auth covers them too."""
    if extensions is None:
        return ()
    return tuple(f"/{e.name}/" for e in extensions.active()
                 if any(r[3] for r in e.hooks.routes) and e.name.lower() not in RESERVED_ROOTS)


def _route_guard(extensions, ext, fn):
    import functools

    from fastapi import HTTPException

    @functools.wraps(fn)
    def route(*args, **kwargs):
        if not ext.enabled:
            raise HTTPException(404, f"extension {ext.name} is disabled")
        try:
            return fn(*args, **kwargs)
        except HTTPException:
            raise
        except Exception as exc:
            extensions.guard(ext, _raise, f"route {fn.__name__}")(exc)
            raise HTTPException(500, f"extension {ext.name}: {type(exc).__name__}: {exc}") from None
    return route


def _raise(exc):
    raise exc


def api_limits(args):
    """The API's request limits (``jobs.spec.Limits``) from --max-size / --max-batch-images."""
    from .jobs.spec import Limits
    return Limits(max_size=args.max_size, max_images=args.max_batch_images)


def build_app(backend, args, ui_auth: list, api_auth: list):
    """One FastAPI app: the API (with --api / --nowebui) and the Gradio UI mounted at / (unless --nowebui)."""
    from fastapi import FastAPI

    from .api.routes import Api
    from .api.security import BasicAuth, BodyLimit, SameOrigin

    with_api = args.api or args.nowebui
    limits = api_limits(args)
    app = FastAPI(title="webui API (A1111 /sdapi/v1)", version=__version__,
                  docs_url="/docs" if with_api else None, redoc_url=None,
                  openapi_url="/openapi.json" if with_api else None)
    if with_api:
        flags = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
                 if k not in ("gradio_auth", "api_auth")}
        app.include_router(Api(backend, limits, flags).router())
        if backend.extensions is not None:
            for router in extension_routers(backend.extensions):
                app.include_router(router)
    if args.cors_allow_origins:
        from fastapi.middleware.cors import CORSMiddleware
        app.add_middleware(CORSMiddleware, allow_origins=[o.strip() for o in args.cors_allow_origins.split(",")],
                           allow_methods=["*"], allow_headers=["*"], allow_credentials=True)
    app.add_middleware(BodyLimit, max_bytes=limits.max_body_bytes)
    # every API route, the docs, and whatever an extension mounts under /sdapi or /extensions-api
    api_paths = ("/sdapi/", "/docs", "/openapi.json", "/extensions-api/", *extension_root_prefixes(backend.extensions))
    app.add_middleware(BasicAuth, users=api_auth, prefixes=api_paths)
    if not args.nowebui:
        import gradio as gr

        from .ui import blocks
        demo, launch_kwargs = blocks.build(backend, theme=args.theme)
        demo.queue(default_concurrency_limit=None)
        app = gr.mount_gradio_app(app, demo, path="/", auth=ui_auth or None, show_error=True,
                                  max_file_size=limits.max_body_bytes, **launch_kwargs)
        # the UI's routes take requests from its own page only (CSRF), API routes keep their CORS policy
        app.add_middleware(SameOrigin, exempt=api_paths)
    return app


def run(args) -> int:
    started = time.perf_counter()
    try:
        auth = parse_auth(args.gradio_auth, args.gradio_auth_path)
        api_auth = parse_auth(args.api_auth, None)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.ckpt is not None and not args.ckpt.is_file():
        print(f"error: checkpoint file {args.ckpt} not found", file=sys.stderr)
        return 2
    port = args.port or (7861 if args.nowebui else 7860)
    paths = folders(args)
    root = paths.root
    for warning in (listen_warning(args.listen and not args.nowebui, auth, port),
                    api_warning(args.listen and (args.api or args.nowebui), api_auth, port)):
        if warning:
            print(warning, file=sys.stderr)

    compile_cache(args, root)
    import uvicorn

    from .jobs.backend import Backend
    from .options import Options

    from .hooks.registry import ExtensionManager

    options = Options(args.ui_settings_file or root / "config.json", log=lambda m: print(m, file=sys.stderr))
    log = lambda m: print(m, file=sys.stderr)   # noqa: E731
    extensions = ExtensionManager(extensions_folder(args), paths, options, log)
    extensions.load()
    backend = Backend(paths, options, extensions=extensions, log=log, **engine_options(args))
    app = build_app(backend, args, auth, api_auth)
    host = "0.0.0.0" if args.listen else "127.0.0.1"
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", timeout_keep_alive=30))
    thread = threading.Thread(target=server.run, name="http", daemon=True)
    thread.start()
    while not server.started:
        if not thread.is_alive():
            print(f"error: could not serve on {host}:{port}", file=sys.stderr)
            backend.stop()
            return 1
        time.sleep(0.05)
    extensions.app_started(app)
    try:   # the model loads in the background once the page is served
        backend.start(backend.catalog.add_checkpoint(args.ckpt) if args.ckpt is not None else None)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        server.should_exit = True
        return 2
    recovered = backend.queue.recover(backend.resume)     # tasks stored before a restart (kill -9 included)
    if any(recovered.values()):
        print("tasks from before the restart: {resumed} queued again, {failed} failed (the running one and any "
              "that could not be resumed), {cancelled} cancelled".format(**recovered), file=sys.stderr)
    what = "API" if args.nowebui else "UI" + (" and API" if args.api else "")
    print(f"Running on http://{host}:{port} ({what}; ready in {time.perf_counter() - started:.1f} s; "
          f"{backend.status.describe()})", flush=True)
    try:
        while thread.is_alive():
            thread.join(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        server.should_exit = True
        thread.join(10)
        backend.stop()
    return 0
