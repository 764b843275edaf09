"""Who may pull what, from where, and how much: checked between routing and the registry."""
