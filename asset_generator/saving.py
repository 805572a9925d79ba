"""Keeping what a generation made: file names, atomic saves, post-processing of each file.

The same rules on every server (cli-contract §5 `generate image`): names from the template,
sanitised and kept inside the output directory, an existing file never overwritten without
``--overwrite``, each saved file post-processed in place after its seed was read.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from asset_generator.downloads import NameFields, prepare_directory, save_stream, target_name
from asset_generator.server.types import ImageReady

if TYPE_CHECKING:
    from asset_generator.images import PostProcess


@dataclass
class SaveOptions:
    """Where and how images are kept."""

    output_dir: Path
    template: str
    overwrite: bool = False
    download: bool = True
    # Crop / downscale / strip each saved file after its seed and parameters were read.
    postprocess: PostProcess | None = None
    # An exact file name instead of the template (a pipeline asset's planned path).
    filename: str | None = None


@dataclass
class SavedImage:
    """One image the server produced, and where we put it."""

    batch_index: int
    server_path: str | None
    path: Path | None
    seed: int | None
    metadata: dict[str, Any] | None
    # What post-processing did (box, sizes, removed metadata) or its error.
    postprocess: dict[str, Any] | None = None

    def public(self) -> dict[str, Any]:
        shown = {
            "path": str(self.path) if self.path else None,
            "server_path": self.server_path,
            "batch_index": self.batch_index,
            "seed": self.seed,
            "metadata": self.metadata,
        }
        if self.postprocess is not None:
            shown["postprocess"] = self.postprocess
        return shown

    def shown(self) -> str:
        """How the registry and `status` name it: the file, else the server's name for it."""
        return str(self.path) if self.path else self.server_path or "(inline image)"


@dataclass(frozen=True)
class Naming:
    """What a file name template can draw on besides the image itself."""

    prompt: str
    model: str | None
    generation_id: str


class Saver:
    """Saves one run's images under the run's options; collects post-processing failures."""

    def __init__(
        self,
        options: SaveOptions,
        naming: Naming,
        read_seed: Callable[[Path], tuple[int | None, dict[str, Any] | None]],
    ) -> None:
        self.options = options
        self.naming = naming
        self._read_seed = read_seed
        self.postprocess_errors: list[str] = []

    def save(
        self,
        image: ImageReady,
        fetch: Callable[[ImageReady], AbstractContextManager[Iterator[bytes]]],
    ) -> SavedImage:
        """Download (or write the inline bytes of) ``image``; DownloadError if it cannot be."""
        if not self.options.download:
            return SavedImage(image.index, image.shown, None, image.seed, image.metadata)
        found: dict[str, Any] = {"seed": image.seed, "metadata": image.metadata}

        def name(temp: Path) -> str:
            if self.options.filename is not None:
                return self.options.filename
            if found["seed"] is None:
                seed, embedded = self._read_seed(temp)
                found["seed"] = seed
                found["metadata"] = found["metadata"] or embedded
            fields = NameFields(
                index=image.index,
                seed=found["seed"],
                prompt=self.naming.prompt,
                model=self.naming.model,
                generation_id=self.naming.generation_id,
                when=time.time(),
            )
            return target_name(self.options.template, fields, f"image.{image.extension}")

        directory = self.options.output_dir
        prepare_directory(directory)
        overwrite = self.options.overwrite
        if image.data is not None:
            path = save_stream(directory, name, [image.data], overwrite=overwrite)
        else:
            with fetch(image) as chunks:
                path = save_stream(directory, name, chunks, overwrite=overwrite)
        saved = SavedImage(image.index, image.shown, path, found["seed"], found["metadata"])
        steps = self.options.postprocess
        if steps is not None and steps.active:
            self._postprocess(saved, steps)
        return saved

    def _postprocess(self, saved: SavedImage, steps: PostProcess) -> None:
        """Crop, downscale, strip a saved file in place; on failure it stays full size."""
        from asset_generator.images import ImageError, postprocess_in_place

        assert saved.path is not None
        try:
            result = postprocess_in_place(saved.path, steps)
        except ImageError as exc:
            # The message names the file; the original stays because every write is atomic.
            problem = f"post-processing failed: {exc}; the full-size file is kept"
            self.postprocess_errors.append(problem)
            saved.postprocess = {"error": problem}
            return
        shown = result.public()
        saved.postprocess = {k: shown[k] for k in ("box", "size_before", "size_after", "removed")}
