"""`iris-studio`: launch IRIS Studio in the browser.

iris-studio                                   # bundled demo model, http://127.0.0.1:7860
iris-studio --model owner/name --device cuda  # a hub model (downloaded into the hub cache)
iris-studio --host 0.0.0.0 --auth me:secret   # reachable from the network: set a password
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from pathlib import Path


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="iris-studio", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=port_number, default=None, help="port (default: 7860 or the next free one)")
    p.add_argument("--share", action="store_true", help="also open a public gradio.live link")
    p.add_argument(
        "--model",
        "-m",
        default=None,
        help="'demo' (bundled), a model folder, a hub id, or a variant name for random weights "
        "(default: the one saved in settings)",
    )
    p.add_argument("--device", default=None, help="cpu, cuda or mps (default: the one saved in settings)")
    p.add_argument(
        "--output-dir",
        default=None,
        help="where results and the gallery live (default: the user data folder)",
    )
    p.add_argument("--no-browser", action="store_true", help="do not open a browser tab")
    p.add_argument("--auth", default=None, metavar="USER:PASS", help="require this login")
    p.add_argument("--no-warmup", action="store_true", help="skip the background warm-up run after start")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the model's core for long sessions (on CUDA, or on a CPU without the native "
                        "kernels, where it made runs about 1.2-1.3x faster; where they run, it gains nothing): "
                   "the warm-up compiles it for the default size, about 1.5 minutes the first time and under half "
                   "a minute once Inductor's cache holds it; each new image size or batch compiles on its first run")
    p.add_argument("--max-file-size", type=file_size, default="25mb",
                   help="largest upload accepted, e.g. 500kb, 25mb, 1gb (default 25mb)")
    p.add_argument(
        "--allowed-hosts",
        default="",
        metavar="NAME[,NAME]",
        help="host names the server answers besides 127.0.0.1, localhost and ::1 (default: those only when "
        "bound to this machine; any name with --host 0.0.0.0 or --share unless this lists some)",
    )
    return p


def port_number(text: str) -> int:
    """A TCP port, 1-65535 (checked here: past 65535 the server's bind failed with a traceback)."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, got {text!r}") from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"a port is between 1 and 65535, got {port}")
    return port


def file_size(text: str) -> str:
    """A size such as 25mb, checked here (a bad one failed with a traceback after the model had loaded)."""
    from .hosts import parse_size

    try:
        size = parse_size(text)
    except (ValueError, OverflowError):
        raise argparse.ArgumentTypeError(f"expected a size such as 500kb, 25mb or 1gb, got {text!r}") from None
    if size < 1:
        raise argparse.ArgumentTypeError(f"the size must be at least 1 byte, got {text!r}")
    return text


def parse_auth(text: str | None) -> tuple[str, str] | None:
    if not text:
        return None
    user, sep, password = text.partition(":")
    if not sep or not user or not password:
        raise SystemExit("iris-studio: error: --auth expects USER:PASS")
    return user, password


def exposure_warning(host: str, share: bool, auth: tuple[str, str] | None) -> str | None:
    """A warning when the app is reachable from other machines without a login."""
    if auth is not None or not (share or host not in ("127.0.0.1", "localhost", "::1")):
        return None
    where = "a public share link" if share else f"{host} (every machine on your network)"
    return f"serving on {where} with no login: anyone reaching it can use this machine. Add --auth USER:PASS"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    auth = parse_auth(args.auth)
    start = time.perf_counter()
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    warning = exposure_warning(args.host, args.share, auth)
    if warning:
        print(f"iris-studio: warning: {warning}", file=sys.stderr)

    from .settings import load_settings, settings_path

    settings, warning = load_settings()
    if warning:
        print(f"iris-studio: warning: {warning}", file=sys.stderr)

    from .engine import Engine
    from .gallery import Gallery

    engine = Engine(args.model or settings.model, args.device or settings.device, compile=args.compile)
    loader = threading.Thread(target=engine.load_or_fallback, name="iris-load", daemon=True)
    loader.start()  # torch + model load overlap with gradio's import
    try:
        gallery = Gallery(Path(args.output_dir) if args.output_dir else None)
    except OSError as err:
        print(f"iris-studio: error: cannot use output folder {args.output_dir}: {err}", file=sys.stderr)
        return 2
    from .app import build_app, launch

    loader.join()
    if engine.notice:
        print(f"iris-studio: note: {engine.notice}".replace("**", ""), file=sys.stderr)
    demo = build_app(engine, settings, gallery, settings_file=settings_path(), warnings=[warning] if warning else [])
    try:
        launch(
            demo,
            host=args.host,
            port=args.port,
            share=args.share,
            auth=auth,
            inbrowser=not args.no_browser,
            prevent_thread_lock=True,
            max_file_size=args.max_file_size,
            allowed_hosts=tuple(h for h in args.allowed_hosts.split(",") if h.strip()),
        )
    except OSError as err:
        print(f"iris-studio: error: cannot start the server: {err}", file=sys.stderr)
        return 1
    print(f"iris-studio: ready in {time.perf_counter() - start:.1f}s · results in {gallery.folder}", flush=True)
    if not args.no_warmup:
        threading.Thread(target=engine.warmup, name="iris-warmup", daemon=True).start()
    try:
        demo.block_thread()
    except KeyboardInterrupt:
        pass
    finally:
        engine.cancel()
    return 0


if __name__ == "__main__":
    sys.exit(main())
