"""mdmail: the admin command on top of the components."""
