"""``python -m asset_generator.emulator``: serve an emulated SwarmUI (or, with ``--kind
comfyui``, ComfyUI) in the foreground."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Sequence
from types import FrameType

from asset_generator.emulator.comfy.config import ComfyConfig
from asset_generator.emulator.config import EmulatorConfig

DEFAULT_PORTS = {"swarmui": 7801, "comfyui": 8188}
DEFAULT_STEP_SECONDS = {"swarmui": 0.05, "comfyui": ComfyConfig.step_seconds}
PREVIEW_METHODS = ("none", "auto", "latent2rgb", "taesd")


def build_parser() -> argparse.ArgumentParser:
    """The command-line options (one per config field that users need)."""
    parser = argparse.ArgumentParser(
        prog="python -m asset_generator.emulator",
        description="Serve a SwarmUI emulator (HTTP + WebSocket) with simulated generation; "
        "with --kind comfyui, a ComfyUI emulator (docs/emulator.md).",
    )
    parser.add_argument(
        "--kind",
        choices=("swarmui", "comfyui"),
        default="swarmui",
        help="which server to emulate (default swarmui)",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument(
        "--port", type=int, help="port (0 picks a free one; default 7801, ComfyUI 8188)"
    )
    parser.add_argument(
        "--step-seconds",
        type=float,
        help="simulated time per sampling step (default 0.05; ComfyUI's KSampler 0.01)",
    )
    parser.add_argument(
        "--latency-seconds",
        type=float,
        help="delay added before every HTTP answer (and, on ComfyUI, the WebSocket handshake)",
    )
    parser.add_argument(
        "--required-authorization",
        metavar="VALUE",
        help="answer 401 Unauthorized unless the Authorization header equals VALUE",
    )
    parser.add_argument("--request-log", metavar="PATH", help="append each request as JSON")
    swarm = parser.add_argument_group("SwarmUI")
    comfy = parser.add_argument_group("ComfyUI (--kind comfyui)")
    _add_comfy_options(comfy)
    swarm.add_argument("--backends", type=int, default=1, help="number of T2I backends")
    swarm.add_argument(
        "--default-steps", type=int, default=20, help="steps when a request gives none"
    )
    swarm.add_argument(
        "--model-load-seconds",
        type=float,
        default=0.0,
        help="time to load a model on a backend (0: models are always loaded)",
    )
    swarm.add_argument(
        "--loaded-model",
        metavar="NAME",
        help="with --model-load-seconds, the model backends start with (others load first)",
    )
    swarm.add_argument(
        "--max-images-in-mini-grid",
        type=int,
        default=1,
        metavar="N",
        help="the user setting MaxImagesInMiniGrid: a request making 2..N images also gets a "
        'grid image (batch_index "-1"); 1 (default) sends none',
    )
    swarm.add_argument(
        "--task-error",
        action="append",
        default=[],
        metavar="TEXT",
        help="fail the next task to run on a backend with this error (repeatable, in order)",
    )
    swarm.add_argument(
        "--silent-task-failures",
        type=int,
        default=0,
        metavar="N",
        help="end the next N tasks on a backend with no image and no error, as SwarmUI does "
        "on a backend timeout or a logged exception",
    )
    swarm.add_argument(
        "--accounts", action="store_true", help="require a swarm_token cookie for sessions"
    )
    swarm.add_argument(
        "--user",
        action="append",
        default=[],
        metavar="NAME",
        help="create an accounts-mode user and print its token (repeatable; needs --accounts)",
    )
    swarm.add_argument(
        "--localhost-bypass",
        action="store_true",
        help="with --accounts, treat loopback callers as the 'local' owner (SwarmUI's default)",
    )
    swarm.add_argument(
        "--serve-interrupt-generation",
        action="store_true",
        help="also serve POST /API/InterruptGeneration (real SwarmUI has no such route)",
    )
    swarm.add_argument(
        "--latency-ms", type=float, default=0.0, help="delay added before every HTTP answer"
    )
    swarm.add_argument(
        "--ws-close-grace-seconds",
        type=float,
        default=2.0,
        help="wait after socket_intention:close for more requests on the socket",
    )
    swarm.add_argument(
        "--ws-keepalive-seconds",
        type=float,
        default=30.0,
        help="interval of unsolicited WebSocket Pong frames, as Kestrel sends (0: none)",
    )
    swarm.add_argument(
        "--sessions-file", metavar="PATH", help="keep session ids in PATH across restarts"
    )
    swarm.add_argument(
        "--server-version",
        default=EmulatorConfig.version,
        metavar="TEXT",
        help="the version GetNewSession reports (a restart with another one rehearses an update)",
    )
    swarm.add_argument("--output-dir", metavar="DIR", help="also write outputs under DIR")
    swarm.add_argument(
        "--deny-permission",
        action="append",
        default=[],
        metavar="PERM",
        help="remove a permission from every user (repeatable)",
    )
    return parser


def _add_comfy_options(group: argparse._ArgumentGroup) -> None:
    group.add_argument(
        "--comfy-version",
        default=ComfyConfig.comfy_version,
        metavar="V",
        help="the version /system_stats reports; before 0.3.57 every interrupt is global, "
        "the jobs API comes with newer versions (docs/emulator.md)",
    )
    group.add_argument(
        "--checkpoint",
        action="append",
        metavar="NAME",
        help="a checkpoint file the server offers (repeatable; replaces the defaults)",
    )
    group.add_argument("--lora", action="append", metavar="NAME", help="a LoRA file (repeatable)")
    group.add_argument("--vae", action="append", metavar="NAME", help="a VAE file (repeatable)")
    group.add_argument(
        "--upscale-model", action="append", metavar="NAME", help="an upscale model (repeatable)"
    )
    group.add_argument(
        "--embedding", action="append", metavar="NAME", help="an embedding file (repeatable)"
    )
    group.add_argument(
        "--preview-method",
        choices=PREVIEW_METHODS,
        default="none",
        help="KSampler previews (binary WebSocket frames); none by default, as ComfyUI",
    )
    group.add_argument(
        "--base-dir",
        metavar="DIR",
        help="keep output/, input/ and temp/ here (default: a temporary directory)",
    )
    group.add_argument(
        "--max-upload-size",
        type=float,
        default=ComfyConfig.max_upload_mb,
        metavar="MB",
        help="bodies above this get 413 (default 100)",
    )
    group.add_argument(
        "--enable-cors-header",
        nargs="?",
        const="*",
        metavar="ORIGIN",
        help="answer with CORS headers instead of refusing foreign origins",
    )


def _swarm_config(options: argparse.Namespace) -> EmulatorConfig:
    latency = options.latency_ms / 1000.0
    if options.latency_seconds is not None:
        latency = options.latency_seconds
    step_seconds = options.step_seconds
    return EmulatorConfig(
        host=options.host,
        port=options.port if options.port is not None else DEFAULT_PORTS["swarmui"],
        backends=options.backends,
        step_seconds=step_seconds if step_seconds is not None else DEFAULT_STEP_SECONDS["swarmui"],
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
        latency_seconds=latency,
        request_log=options.request_log,
        ws_close_grace_seconds=options.ws_close_grace_seconds,
        ws_keepalive_seconds=options.ws_keepalive_seconds,
        sessions_file=options.sessions_file,
        version=options.server_version,
        output_dir=options.output_dir,
    )


def _comfy_config(options: argparse.Namespace) -> ComfyConfig:
    base = ComfyConfig()

    def names(given: list[str] | None, default: list[str]) -> list[str]:
        return list(given) if given else list(default)

    return ComfyConfig(
        host=options.host,
        port=options.port if options.port is not None else DEFAULT_PORTS["comfyui"],
        comfy_version=options.comfy_version,
        step_seconds=(
            options.step_seconds if options.step_seconds is not None else base.step_seconds
        ),
        checkpoints=names(options.checkpoint, base.checkpoints),
        loras=names(options.lora, base.loras),
        vaes=names(options.vae, base.vaes),
        upscale_models=names(options.upscale_model, base.upscale_models),
        embeddings=names(options.embedding, base.embeddings),
        preview_method=options.preview_method,
        base_dir=options.base_dir,
        max_upload_mb=options.max_upload_size,
        required_authorization=options.required_authorization,
        latency_seconds=options.latency_seconds or 0.0,
        request_log=options.request_log,
        cors_origin=options.enable_cors_header,
    )


# SwarmUI-only options, and what they are when not given.
SWARM_ONLY = {
    "--backends": ("backends", 1),
    "--accounts": ("accounts", False),
    "--user": ("user", []),
    "--task-error": ("task_error", []),
    "--sessions-file": ("sessions_file", None),
    "--output-dir": ("output_dir", None),
    "--latency-ms": ("latency_ms", 0.0),
}


def main(argv: Sequence[str] | None = None) -> int:
    """Run until SIGINT or SIGTERM; exit status 0 on a normal stop."""
    parser = build_parser()
    options = parser.parse_args(argv)
    if options.kind == "comfyui":
        for flag, (name, default) in SWARM_ONLY.items():
            if getattr(options, name) != default:
                parser.error(f"{flag} is an option of the SwarmUI emulator, not --kind comfyui")
        return _serve_comfy(options)
    if options.user and not options.accounts:
        parser.error("--user needs --accounts")
    config = _swarm_config(options)
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


def _serve_comfy(options: argparse.Namespace) -> int:
    from asset_generator.emulator.comfy.emulator import ComfyEmulator

    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    emulator = ComfyEmulator(_comfy_config(options))
    try:
        emulator.start()
    except OSError as exc:
        print(
            f"cannot listen on {options.host}:{emulator.config.port}: {exc.strerror or exc}",
            file=sys.stderr,
        )
        return 1
    print(
        f"ComfyUI {emulator.config.comfy_version} emulator listening on {emulator.url} "
        f"(files under {emulator.server.folders.base})",
        file=sys.stderr,
        flush=True,
    )
    try:
        while not stop.wait(0.5):
            pass
    finally:
        emulator.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
