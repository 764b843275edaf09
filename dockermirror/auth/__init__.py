"""Who may use the mirror: its own tokens."""
