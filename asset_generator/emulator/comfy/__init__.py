"""The ComfyUI emulator (``python -m asset_generator.emulator --kind comfyui``)."""
