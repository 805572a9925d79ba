"""asset-generator: a command-line client for self-hosted SwarmUI servers."""

__version__ = "0.1.0"
