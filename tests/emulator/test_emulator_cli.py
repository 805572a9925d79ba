"""``python -m asset_generator.emulator``: the options users rehearse scripts with."""

from __future__ import annotations

import subprocess
import sys

from asset_generator.emulator.__main__ import build_parser


def test_fidelity_options_are_documented_and_parsed() -> None:
    options = build_parser().parse_args(
        [
            "--model-load-seconds", "5", "--loaded-model", "flux/flux1-dev",
            "--max-images-in-mini-grid", "4", "--task-error", "ComfyUI errored: x",
            "--task-error", "Something went wrong while generating images.",
            "--silent-task-failures", "2", "--server-version", "0.9.9.0",
        ]
    )  # fmt: skip
    assert options.loaded_model == "flux/flux1-dev"
    assert options.max_images_in_mini_grid == 4
    assert options.task_error == [
        "ComfyUI errored: x",
        "Something went wrong while generating images.",
    ]
    assert options.silent_task_failures == 2
    assert options.server_version == "0.9.9.0"
    assert build_parser().parse_args([]).server_version == "0.9.8.2.GIT-emulator"
    shown = subprocess.run(
        [sys.executable, "-m", "asset_generator.emulator", "--help"],
        capture_output=True, text=True, timeout=30, check=True,
    ).stdout  # fmt: skip
    for flag in ("--loaded-model", "--max-images-in-mini-grid", "--task-error",
                 "--silent-task-failures", "--server-version"):  # fmt: skip
        assert flag in shown
