"""What the config's ``[generate]`` table adds to a generation, for the commands and the MCP
worker alike: the options sent when not given, and the post-processing of each saved file.

No click here (the worker imports it) and no Pillow (a generation without post-processing
must not pay for it); a command puts its own flags on top through ``given``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from asset_generator.settings import SettingsError

if TYPE_CHECKING:
    from asset_generator.images import PostProcess
    from asset_generator.settings import Resolved

POSTPROCESS_NAMES = (
    "auto_crop",
    "auto_crop_threshold",
    "auto_crop_tolerance",
    "auto_crop_preserve_aspect",
    "downscale_width",
    "downscale_height",
    "downscale_percentage",
    "downscale_filter",
    "strip_metadata",
    "jpeg_quality",
)
SIZE_NAMES = ("downscale_width", "downscale_height", "downscale_percentage")


def config_defaults(settings: Resolved, names: tuple[str, ...]) -> dict[str, Any]:
    """The config's ``[generate]`` values of ``names`` that are set."""
    values = {name: settings[f"generate.{name}"] for name in names}
    return {name: value for name, value in values.items() if value is not None}


def postprocess_of(
    settings: Resolved, given: Mapping[str, Any] | None = None
) -> PostProcess | None:
    """The steps ``given`` (a command's flags, None when not typed) ask for, the config's
    ``[generate]`` keys under them; None for none.

    A size given replaces the config's size as a whole: a configured percentage must not
    collide with a width typed today. A percentage with a width or height from the config is
    a SettingsError (the caller checks its own flags first, to name them).
    """
    given = given or {}

    def value(name: str) -> Any:
        typed = given.get(name)
        return typed if typed is not None else settings[f"generate.{name}"]

    if any(given.get(name) is not None for name in SIZE_NAMES):
        width, height, percentage = (given.get(name) for name in SIZE_NAMES)
    else:
        width, height, percentage = (settings[f"generate.{name}"] for name in SIZE_NAMES)
    if percentage is not None and (width or height):
        raise SettingsError(
            "generate.downscale_percentage cannot be combined with "
            "generate.downscale_width/generate.downscale_height (config)"
        )
    crop = bool(value("auto_crop"))
    strip = bool(value("strip_metadata"))
    if not (crop or strip or width or height or percentage):
        return None
    from asset_generator.images import CropOptions, DownscaleOptions, PostProcess

    return PostProcess(
        crop=CropOptions(
            threshold=value("auto_crop_threshold"),
            tolerance=value("auto_crop_tolerance"),
            preserve_aspect=bool(value("auto_crop_preserve_aspect")),
        )
        if crop
        else None,
        downscale=DownscaleOptions(width, height, percentage, value("downscale_filter").lower())
        if width or height or percentage
        else None,
        strip_metadata=strip,
        jpeg_quality=value("jpeg_quality"),
    )
