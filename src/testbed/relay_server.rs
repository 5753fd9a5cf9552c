//! Stand-in NetBird relay server (in progress).
