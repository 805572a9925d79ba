"""The ComfyUI protocol (comfyui-protocol.md): routes, JSON shapes, workflows. No click, no rich."""
