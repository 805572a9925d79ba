"""The generation options that `generate image` and `pipeline` share, declared once."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from asset_generator.cli import FiniteFloatRange, WholeNumber
from asset_generator.cli.completion import complete_lora, complete_model


def generation_options(*, scope: str = "") -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """``--negative-prompt`` … ``--param``: SwarmUI parameters, sent only when set.

    ``scope``: words added to the repeatable options' help (" to every asset" for pipeline).
    """
    options = (
        click.option("--negative-prompt", metavar="TEXT", help="What to avoid."),
        click.option(
            "--model",
            "-m",
            metavar="NAME",
            help="Model name as `models list` shows it.",
            shell_complete=complete_model,
        ),
        click.option("--width", type=WholeNumber(64, 16384), help="Width in pixels."),
        click.option("--height", type=WholeNumber(64, 16384), help="Height in pixels."),
        click.option("--steps", type=WholeNumber(0, 500), help="Sampling steps."),
        click.option("--cfg-scale", type=FiniteFloatRange(0, 100), help="CFG scale."),
        click.option("--sampler", metavar="NAME", help="Sampler, e.g. euler, dpmpp_2m."),
        click.option("--scheduler", metavar="NAME", help="Scheduler, e.g. normal, karras."),
        click.option(
            "--lora",
            "loras",
            multiple=True,
            metavar="NAME[:WEIGHT]",
            help=f"Apply a LoRA{scope} (repeatable); weight defaults to 1.",
            shell_complete=complete_lora,
        ),
        click.option(
            "--param",
            "params",
            multiple=True,
            metavar="KEY=VALUE",
            help=f"Any other SwarmUI parameter{scope} (repeatable); numbers and true/false "
            "are typed.",
        ),
    )

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        for option in reversed(options):
            command = option(command)
        return command

    return decorate
