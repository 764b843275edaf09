"""The HTTP client side: the only code that talks to upstream registries (through treq)."""
