"""Built-in components. Each module registers itself with the same public decorators a user plugin uses."""
