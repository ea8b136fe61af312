"""One module per pipeline step: each takes a config and an optional Reporter and returns a
result; the CLI only parses flags and renders."""
