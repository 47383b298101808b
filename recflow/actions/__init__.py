"""The built-in actions, each a default plugin of its own."""
