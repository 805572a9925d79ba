"""The SwarmUI protocol: routes, JSON shapes and transport. No click, no rich."""
