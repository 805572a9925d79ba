"""The output, input and temp folders, and ComfyUI's rules for naming files in them.

The path logic follows ``folder_paths.py`` (``get_save_image_path``, ``annotated_filepath``)
closely, with the same ``os.path`` calls, so edge cases (``..`` in a prefix, a subfolder that
escapes, the counter read from disk) come out as on the real server.
"""

from __future__ import annotations

import mimetypes
import os
import shutil
import tempfile
import time
from pathlib import Path

from asset_generator.emulator.png import encode_png


class Folders:
    """``output/``, ``input/`` and ``temp/`` under one base directory."""

    def __init__(self, base_dir: str | Path | None) -> None:
        self._owned = base_dir is None
        base = Path(tempfile.mkdtemp(prefix="comfyui-emulator-")) if base_dir is None else None
        self.base = os.path.abspath(str(base if base is not None else base_dir))
        self.output = os.path.join(self.base, "output")
        self.input = os.path.join(self.base, "input")
        self.temp = os.path.join(self.base, "temp")
        for path in (self.output, self.input):
            os.makedirs(path, exist_ok=True)
        # main.py wipes the temp directory at every start.
        shutil.rmtree(self.temp, ignore_errors=True)
        os.makedirs(self.temp, exist_ok=True)
        example = os.path.join(self.input, "example.png")
        if not os.path.exists(example):
            # ComfyUI ships input/example.png, the default of LoadImage.
            rows = [bytes((96, 128, 160)) * 64] * 64
            Path(example).write_bytes(encode_png(64, 64, rows))

    def remove(self) -> None:
        """Delete the folders if the emulator created them."""
        if self._owned:
            shutil.rmtree(self.base, ignore_errors=True)

    def directory_by_type(self, kind: object) -> str | None:
        """``folder_paths.get_directory_by_type``."""
        return {"output": self.output, "input": self.input, "temp": self.temp}.get(
            kind if isinstance(kind, str) else ""
        )

    def annotated_filepath(self, name: str) -> tuple[str, str | None]:
        """``name [output]`` / ``[input]`` / ``[temp]`` choose the folder."""
        if name.endswith("[output]"):
            return name[:-9], self.output
        if name.endswith("[input]"):
            return name[:-8], self.input
        if name.endswith("[temp]"):
            return name[:-7], self.temp
        return name, None

    def get_annotated_filepath(self, name: str, default_dir: str | None = None) -> str:
        name, base_dir = self.annotated_filepath(name)
        if base_dir is None:
            base_dir = default_dir if default_dir is not None else self.input
        return os.path.join(base_dir, name)

    def exists_annotated_filepath(self, name: str) -> bool:
        return os.path.exists(self.get_annotated_filepath(name))

    def input_images(self) -> list[str]:
        """LoadImage's options: the image files directly in ``input/``, sorted."""
        try:
            names = os.listdir(self.input)
        except FileNotFoundError:
            return []
        files = [n for n in names if os.path.isfile(os.path.join(self.input, n))]
        images = []
        for name in files:
            kind, _ = mimetypes.guess_type(name, strict=False)
            if kind and kind.split("/")[0] == "image":
                images.append(name)
        return sorted(images)

    def save_image_path(
        self, filename_prefix: str, output_dir: str, image_width: int = 0, image_height: int = 0
    ) -> tuple[str, str, int, str, str]:
        """``folder_paths.get_save_image_path``: folder, file stem, next counter, subfolder."""

        def map_filename(filename: str) -> tuple[int, str]:
            prefix_len = len(os.path.basename(filename_prefix))
            prefix = filename[: prefix_len + 1]
            try:
                digits = int(filename[prefix_len + 1 :].split("_")[0])
            except ValueError:
                digits = 0
            return digits, prefix

        def compute_vars(text: str) -> str:
            text = text.replace("%width%", str(image_width))
            text = text.replace("%height%", str(image_height))
            now = time.localtime()
            text = text.replace("%year%", str(now.tm_year))
            text = text.replace("%month%", str(now.tm_mon).zfill(2))
            text = text.replace("%day%", str(now.tm_mday).zfill(2))
            text = text.replace("%hour%", str(now.tm_hour).zfill(2))
            text = text.replace("%minute%", str(now.tm_min).zfill(2))
            text = text.replace("%second%", str(now.tm_sec).zfill(2))
            return text

        if "%" in filename_prefix:
            filename_prefix = compute_vars(filename_prefix)
        subfolder = os.path.dirname(os.path.normpath(filename_prefix))
        filename = os.path.basename(os.path.normpath(filename_prefix))
        full_output_folder = os.path.join(output_dir, subfolder)
        common = os.path.commonpath((output_dir, os.path.abspath(full_output_folder)))
        if common != output_dir:
            # A plain Exception, as in folder_paths.py: execution_error says "Exception".
            raise Exception(
                "**** ERROR: Saving image outside the output folder is not allowed."
                + "\n full_output_folder: "
                + os.path.abspath(full_output_folder)
                + "\n         output_dir: "
                + output_dir
                + "\n         commonpath: "
                + common
            )
        try:
            counter = (
                max(
                    filter(
                        lambda a: (
                            os.path.normcase(a[1][:-1]) == os.path.normcase(filename)
                            and a[1][-1] == "_"
                        ),
                        map(map_filename, os.listdir(full_output_folder)),
                    )
                )[0]
                + 1
            )
        except ValueError:
            counter = 1
        except FileNotFoundError:
            os.makedirs(full_output_folder, exist_ok=True)
            counter = 1
        return full_output_folder, filename, counter, subfolder, filename_prefix
