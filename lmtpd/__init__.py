"""LMTP server (RFC 2033): a protocol core without I/O and the layers around it."""
