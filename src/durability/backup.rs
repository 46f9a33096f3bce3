//! Online backup: a consistent, verified copy of a data directory, taken
//! while the server runs.
