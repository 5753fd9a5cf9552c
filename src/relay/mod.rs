//! NetBird Relay client (see `messages` for the wire format).
