"""The web console at `/` (docs/console.md): HTML pages for the people who run tokenfarm."""
