"""The `nexa` subcommands, one module per concern; nexa_core/cli.py builds the parser from them."""
