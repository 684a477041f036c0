"""tlsearch's built-in plugins.

Each module below is registered through the ``tlsearch`` entry-point group in ``pyproject.toml``,
exactly as a third-party plugin package would be; nothing in the core imports them directly.
"""
