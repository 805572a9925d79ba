"""``python -m asset_generator.emulator``: serve an emulated SwarmUI in the foreground."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Sequence
from types import FrameType

from asset_generator.emulator.config import EmulatorConfig


def build_parser() -> argparse.ArgumentParser:
    """The command-line options (one per EmulatorConfig field that users need)."""
    parser = argparse.ArgumentParser(
        prog="python -m asset_generator.emulator",
        description="Serve a SwarmUI emulator (HTTP + WebSocket) with simulated generation.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=7801, help="port (0 picks a free one)")
    parser.add_argument("--backends", type=int, default=1, help="number of T2I backends")
    parser.add_argument(
        "--step-seconds", type=float, default=0.05, help="simulated time per sampling step"
    )
    parser.add_argument(
        "--default-steps", type=int, default=20, help="steps when a request gives none"
    )
    parser.add_argument(
        "--model-load-seconds",
        type=float,
        default=0.0,
        help="time to load a model on a backend (0: models are always loaded)",
    )
    parser.add_argument(
        "--loaded-model",
        metavar="NAME",
        help="with --model-load-seconds, the model backends start with (others load first)",
    )
    parser.add_argument(
        "--max-images-in-mini-grid",
        type=int,
        default=1,
        metavar="N",
        help="the user setting MaxImagesInMiniGrid: a request making 2..N images also gets a "
        'grid image (batch_index "-1"); 1 (default) sends none',
    )
    parser.add_argument(
        "--task-error",
        action="append",
        default=[],
        metavar="TEXT",
        help="fail the next task to run on a backend with this error (repeatable, in order)",
    )
    parser.add_argument(
        "--silent-task-failures",
        type=int,
        default=0,
        metavar="N",
        help="end the next N tasks on a backend with no image and no error, as SwarmUI does "
        "on a backend timeout or a logged exception",
    )
    parser.add_argument(
        "--accounts", action="store_true", help="require a swarm_token cookie for sessions"
    )
    parser.add_argument(
        "--user",
        action="append",
        default=[],
        metavar="NAME",
        help="create an accounts-mode user and print its token (repeatable; needs --accounts)",
    )
    parser.add_argument(
        "--localhost-bypass",
        action="store_true",
        help="with --accounts, treat loopback callers as the 'local' owner (SwarmUI's default)",
    )
    parser.add_argument(
        "--serve-interrupt-generation",
        action="store_true",
        help="also serve POST /API/InterruptGeneration (real SwarmUI has no such route)",
    )
    parser.add_argument(
        "--required-authorization",
        metavar="VALUE",
        help="answer 401 Unauthorized unless the Authorization header equals VALUE",
    )
    parser.add_argument(
        "--latency-ms", type=float, default=0.0, help="delay added before every HTTP answer"
    )
    parser.add_argument(
        "--ws-close-grace-seconds",
        type=float,
        default=2.0,
        help="wait after socket_intention:close for more requests on the socket",
    )
    parser.add_argument(
        "--ws-keepalive-seconds",
        type=float,
        default=30.0,
        help="interval of unsolicited WebSocket Pong frames, as Kestrel sends (0: none)",
    )
    parser.add_argument(
        "--sessions-file", metavar="PATH", help="keep session ids in PATH across restarts"
    )
    parser.add_argument(
        "--server-version",
        default=EmulatorConfig.version,
        metavar="TEXT",
        help="the version GetNewSession reports (a restart with another one rehearses an update)",
    )
    parser.add_argument("--request-log", metavar="PATH", help="append each request as JSON")
    parser.add_argument("--output-dir", metavar="DIR", help="also write outputs under DIR")
    parser.add_argument(
        "--deny-permission",
        action="append",
        default=[],
        metavar="PERM",
        help="remove a permission from every user (repeatable)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run until SIGINT or SIGTERM; exit status 0 on a normal stop."""
    parser = build_parser()
    options = parser.parse_args(argv)
    if options.user and not options.accounts:
        parser.error("--user needs --accounts")
    config = EmulatorConfig(
        host=options.host,
        port=options.port,
        backends=options.backends,
        step_seconds=options.step_seconds,
        default_steps=options.default_steps,
        model_load_seconds=options.model_load_seconds,
        loaded_model=options.loaded_model,
        max_images_in_mini_grid=options.max_images_in_mini_grid,
        task_errors=list(options.task_error),
        silent_task_failures=options.silent_task_failures,
        accounts=options.accounts,
        localhost_bypass=options.localhost_bypass,
        serve_interrupt_generation=options.serve_interrupt_generation,
        required_authorization=options.required_authorization,
        deny_permissions=set(options.deny_permission),
        latency_seconds=options.latency_ms / 1000.0,
        request_log=options.request_log,
        ws_close_grace_seconds=options.ws_close_grace_seconds,
        ws_keepalive_seconds=options.ws_keepalive_seconds,
        sessions_file=options.sessions_file,
        version=options.server_version,
        output_dir=options.output_dir,
    )
    from asset_generator.emulator.emulator import Emulator

    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    emulator = Emulator(config)
    try:
        emulator.start()
    except OSError as exc:
        print(
            f"cannot listen on {options.host}:{options.port}: {exc.strerror or exc}",
            file=sys.stderr,
        )
        return 1
    tokens = [(name, emulator.add_user(name)) for name in options.user]
    print(f"SwarmUI emulator listening on {emulator.url}", file=sys.stderr, flush=True)
    for name, token in tokens:
        print(f"user {name} token {token}", file=sys.stderr, flush=True)
    try:
        while not stop.wait(0.5):
            pass
    finally:
        emulator.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
