//! Server-side search. `encrypted_dir`: the index's files encrypted at rest (spec/at-rest.md).

pub mod encrypted_dir;
