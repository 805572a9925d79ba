"""The ComfyUI adapter: its protocol, workflows and the conversion of what the web UI saves."""
