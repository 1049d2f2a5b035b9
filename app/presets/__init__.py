"""Presets: a few parameters expand into an ordinary, editable refresh action bound to a secret."""
