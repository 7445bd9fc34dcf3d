"""POP3 proxy (RFC 1939): a protocol core without I/O and the layers around it."""
