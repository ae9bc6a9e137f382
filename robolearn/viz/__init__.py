"""Looking at data with Rerun: recorded episodes (`robolearn data view`), live views of running loops
(`--view` on record and finetune), and a policy's sampled action chunks (`robolearn introspect`).

Rerun (`rerun-sdk`) is an optional extra (``pip install 'robolearn[viz]'``); everything here imports it
through :func:`require_rerun`, which turns its absence into one line saying how to install it. Imports
point down only: the store, rigs and policies know nothing of this package.
"""

from __future__ import annotations

from typing import Any

from robolearn.errors import UserError

INSTALL_HINT = "rerun-sdk is not installed: pip install 'robolearn[viz]' (or pip install 'rerun-sdk==0.41.*')"
APP_ID = "robolearn"


def require_rerun() -> Any:
    """The ``rerun`` module, or a one-line :class:`UserError` naming the extra to install."""
    try:
        import rerun
    except ImportError:
        raise UserError(INSTALL_HINT) from None
    return rerun


def open_sink(rec: Any, spec: str) -> str:
    """Point a recording stream at its viewer: ``spawn`` (a local viewer), ``save:FILE.rrd``, or
    ``serve`` / ``serve:PORT`` (Rerun's web viewer on PORT, default 9090, its data on PORT + 1, default
    9876; for a machine without a display).
    Returns a line saying where the data goes."""
    kind, _, arg = spec.partition(":")
    if kind == "spawn" and not arg:
        import os
        import sys

        if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
            raise UserError("no display to open the Rerun viewer on: save a file (--save FILE.rrd / --view "
                            "save:FILE.rrd) or serve the web viewer (--serve [PORT] / --view serve[:PORT])")
        rec.spawn()
        return "the Rerun viewer (spawned)"
    if kind == "save":
        if not arg or not arg.endswith(".rrd"):
            raise UserError(f"view {spec!r}: give a file ending in .rrd, e.g. save:episode.rrd")
        from pathlib import Path

        Path(arg).parent.mkdir(parents=True, exist_ok=True)
        rec.save(arg)
        return arg
    if kind == "serve":
        port, grpc_port = 9090, None  # Rerun's defaults: web 9090, data (gRPC) 9876
        if arg:
            try:
                port = int(arg)
            except ValueError:
                raise UserError(f"view {spec!r}: the port must be a number, e.g. serve:9090") from None
            grpc_port = port + 1  # a chosen port moves both, so two servers on one machine do not collide
        import socket
        from urllib.parse import quote

        # Both servers listen on every interface; the page tells the browser where the data is, so it
        # must name this machine as other machines see it, not 127.0.0.1.
        host = socket.gethostname()
        url = rec.serve_grpc(grpc_port=grpc_port).replace("127.0.0.1", host).replace("localhost", host)
        require_rerun().serve_web_viewer(web_port=port, open_browser=False, connect_to=url)
        return f"Rerun's web viewer: open http://{host}:{port}/?url={quote(url, safe='')} (or this machine's address)"
    raise UserError(f"unknown view {spec!r}: use spawn, save:FILE.rrd, serve or serve:PORT")
