"""Services: named groups of endpoints whose actions refresh secrets."""
