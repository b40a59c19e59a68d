//! PDUs refused because a prev event could not be had (its origin down, the room's other
//! servers too, or the fetch limit reached). `/send` answers them with an error, as the spec
//! says, but they are not forgotten: kept in `federation_pending_pdus` and tried again when the
//! room's next PDU arrives (its origin is up then, and may have brought the missing event) and
//! on a timer, backing off, until they enter the DAG, are refused for another reason, or run out
//! of attempts.

use std::{collections::HashSet, sync::Mutex, time::Duration};

use ruma::{RoomId, ServerName};
use serde_json::value::RawValue;

use super::inbound::{self, Refused};
use crate::{services::Services, store::PendingPdu, util::now_ms};

/// Attempts before a pending PDU is given up.
const MAX_ATTEMPTS: i64 = 12;
/// The first retry's delay; each further one doubles, up to `MAX_DELAY_MS`.
const FIRST_DELAY_MS: i64 = 2_000;
const MAX_DELAY_MS: i64 = 10 * 60 * 1_000;
/// How often the timer looks for due PDUs.
const TICK: Duration = Duration::from_secs(2);
/// Most pending PDUs kept per room (a flood of unplaceable PDUs cannot grow the table).
const MAX_PER_ROOM: i64 = 200;
/// Most pending PDUs tried per room and pass.
const BATCH: i64 = 50;
/// How long a received redaction waits for its target (`redactions_awaiting_target`).
const REDACTION_WAIT_MS: i64 = 24 * 60 * 60 * 1_000;
/// Ticks between prunings of redactions whose target never came (about an hour).
const PRUNE_EVERY: u64 = 1_800;

/// Rooms whose pending PDUs are being tried (one retry per room at a time).
#[derive(Default)]
pub struct Retrying {
    rooms: Mutex<HashSet<String>>,
}

fn delay_after(attempts: i64) -> i64 {
    FIRST_DELAY_MS
        .saturating_mul(1_i64 << attempts.clamp(0, 20))
        .min(MAX_DELAY_MS)
}

/// Keeps a PDU refused for a missing prev event (best effort: a failure is logged).
pub async fn keep(svc: &Services, origin: &ServerName, pdu: &RawValue, refused: &Refused) {
    let Some(event_id) = &refused.event_id else {
        return;
    };
    let Some(room_id) = room_of(pdu) else {
        return;
    };
    let now = now_ms();
    match svc.store.pending_pdu_count(&room_id).await {
        Ok(n) if n >= MAX_PER_ROOM => {
            tracing::warn!(%room_id, %event_id, "too many pending PDUs in the room; not kept");
            return;
        }
        Err(error) => {
            tracing::warn!(%error, "counting pending PDUs failed");
            return;
        }
        Ok(_) => {}
    }
    if let Err(error) = svc
        .store
        .keep_pending_pdu(
            event_id.as_str(),
            &room_id,
            origin.as_str(),
            pdu.get(),
            &refused.reason,
            now + delay_after(0),
            now,
        )
        .await
    {
        tracing::warn!(%error, %event_id, "keeping a pending PDU failed");
    }
}

fn room_of(pdu: &RawValue) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct RoomOf {
        room_id: String,
    }
    serde_json::from_str::<RoomOf>(pdu.get()).ok().map(|r| r.room_id)
}

/// Tries the room's pending PDUs again, in the background (a PDU of the room just arrived).
pub fn retry_room_soon(svc: &Services, room_id: &RoomId) {
    let (svc, room_id) = (svc.clone(), room_id.to_string());
    tokio::spawn(async move { retry_room(&svc, &room_id, false).await });
}

/// Tries the room's pending PDUs (only the due ones when `due_only`), oldest first, pass after
/// pass while one enters the DAG (it may be the prev event another one lacked). Returns how
/// many entered.
pub async fn retry_room(svc: &Services, room_id: &str, due_only: bool) -> usize {
    if !svc
        .federation
        .pending
        .rooms
        .lock()
        .expect("pending rooms lock")
        .insert(room_id.to_owned())
    {
        return 0;
    }
    let placed = retry_passes(svc, room_id, due_only).await;
    svc.federation
        .pending
        .rooms
        .lock()
        .expect("pending rooms lock")
        .remove(room_id);
    placed
}

async fn retry_passes(svc: &Services, room_id: &str, due_only: bool) -> usize {
    let mut placed = 0;
    let mut first_pass = true;
    loop {
        let now = now_ms();
        let rows = match svc.store.pending_pdus_of_room(room_id, BATCH).await {
            Ok(rows) => rows,
            Err(error) => {
                tracing::warn!(%error, "reading pending PDUs failed");
                return placed;
            }
        };
        let mut progress = false;
        for row in rows {
            if due_only && first_pass && row.next_try_ts > now {
                continue;
            }
            if try_one(svc, &row).await {
                placed += 1;
                progress = true;
            }
        }
        if !progress {
            return placed;
        }
        first_pass = false;
    }
}

/// One attempt: placed (or known) → dropped; refused again for a missing prev event → tried
/// later, until `MAX_ATTEMPTS`; refused otherwise → dropped (rejected events are recorded by the
/// pipeline). Returns whether it entered the DAG.
async fn try_one(svc: &Services, row: &PendingPdu) -> bool {
    let Ok(origin) = <&ServerName>::try_from(row.origin.as_str()) else {
        let _ = svc.store.drop_pending_pdu(&row.event_id).await;
        return false;
    };
    let Ok(raw) = RawValue::from_string(row.json.clone()) else {
        let _ = svc.store.drop_pending_pdu(&row.event_id).await;
        return false;
    };
    let outcome = inbound::accept_as(svc, origin, &raw, inbound::Arrival::Pending).await;
    let result = match &outcome {
        Ok(accepted) => {
            tracing::info!(event_id = %row.event_id, fate = ?accepted.fate, "pending PDU placed");
            svc.store.drop_pending_pdu(&row.event_id).await
        }
        Err(refused) if refused.missing_prev && row.attempts + 1 < MAX_ATTEMPTS => {
            tracing::debug!(event_id = %row.event_id, reason = %refused.reason, "pending PDU still lacks a prev event");
            svc.store
                .pending_pdu_tried(
                    &row.event_id,
                    &refused.reason,
                    now_ms() + delay_after(row.attempts + 1),
                )
                .await
        }
        Err(refused) => {
            tracing::info!(event_id = %row.event_id, reason = %refused.reason, "pending PDU given up");
            svc.store.drop_pending_pdu(&row.event_id).await
        }
    };
    if let Err(error) = result {
        tracing::warn!(%error, event_id = %row.event_id, "updating a pending PDU failed");
    }
    outcome.is_ok()
}

/// The timer: every `TICK`, the rooms with due pending PDUs are tried; every `PRUNE_EVERY`
/// ticks (and at the first), redactions that waited a day for their target are forgotten.
pub fn start(svc: &Services) {
    let svc = svc.clone();
    tokio::spawn(async move {
        for tick in 0_u64.. {
            tokio::time::sleep(TICK).await;
            if tick % PRUNE_EVERY == 0 {
                match svc
                    .store
                    .prune_awaiting_redactions(now_ms() - REDACTION_WAIT_MS)
                    .await
                {
                    Ok(0) => {}
                    Ok(pruned) => tracing::info!(pruned, "redactions whose target never came forgotten"),
                    Err(error) => tracing::warn!(%error, "pruning waiting redactions failed"),
                }
            }
            let rooms = match svc.store.rooms_with_due_pending_pdus(now_ms()).await {
                Ok(rooms) => rooms,
                Err(error) => {
                    tracing::warn!(%error, "reading due pending PDUs failed");
                    continue;
                }
            };
            for room_id in rooms {
                retry_room(&svc, &room_id, true).await;
            }
        }
    });
}
