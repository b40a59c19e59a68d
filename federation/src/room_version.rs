//! The room versions Hearth speaks, and the ruma rules behind each.

use ruma::{RoomVersionId, room_version_rules::RoomVersionRules};

/// Room versions this server creates and joins. Older versions are refused: they predate
/// canonical JSON and the state resolution v2 that ruma implements.
pub const SUPPORTED_ROOM_VERSIONS: &[RoomVersionId] =
    &[RoomVersionId::V10, RoomVersionId::V11, RoomVersionId::V12];

/// The version `/createRoom` uses when the client does not ask for one.
pub const DEFAULT_ROOM_VERSION: RoomVersionId = RoomVersionId::V12;

/// The rules of a supported room version, or `None` for any other.
pub fn rules_for(version: &RoomVersionId) -> Option<RoomVersionRules> {
    if SUPPORTED_ROOM_VERSIONS.contains(version) {
        version.rules()
    } else {
        None
    }
}
