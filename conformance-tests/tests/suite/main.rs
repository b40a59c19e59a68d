//! The conformance suite: one module per module of the Client-Server API specification, and
//! `federation` for the Server-Server API.
//! Test names are `<module>::<test>`; `conformance-report` groups results by `<module>`.

mod account;
mod account_data;
mod devices;
mod directory;
mod discovery;
mod e2ee;
mod e2ee_devices;
mod ephemeral;
mod errors;
mod federation;
mod filters;
mod key_backup;
mod login;
mod logout;
mod media;
mod membership;
mod messages;
mod profile;
mod push_rules;
mod registration;
mod relations;
mod room_state;
mod rooms_create;
mod rooms_extra;
mod search;
mod sync;
mod visibility;
