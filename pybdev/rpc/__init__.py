"""JSON-RPC: method registry, dispatcher, stream framing, Unix-socket server, client, schema."""
