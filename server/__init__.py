"""The one place that wires everything: `create_app()` and the `alliance` command."""
