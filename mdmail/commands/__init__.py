"""One module per subcommand group of the mdmail command."""
