//! Rooms and what users keep about them (forgotten rooms).

use sqlx::{Any, Row, Transaction};

use super::{Store, StoreResult, q};

#[derive(Debug, Clone)]
pub struct RoomRow {
    pub room_id: String,
    pub room_version: String,
    pub creator: String,
    pub is_public: bool,
}

impl Store {
    pub(super) async fn insert_room_in(
        tx: &mut Transaction<'static, Any>,
        room: &RoomRow,
        now: i64,
    ) -> StoreResult<()> {
        q("INSERT INTO rooms (room_id, room_version, creator, is_public, created_ts) VALUES ($1, $2, $3, $4, $5)")
            .bind(room.room_id.clone())
            .bind(room.room_version.clone())
            .bind(room.creator.clone())
            .bind(i64::from(room.is_public))
            .bind(now)
            .execute(&mut **tx)
            .await?;
        Ok(())
    }

    pub async fn room(&self, room_id: &str) -> StoreResult<Option<RoomRow>> {
        let row = q("SELECT room_id, room_version, creator, is_public FROM rooms WHERE room_id = $1")
            .bind(room_id.to_owned())
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| RoomRow {
            room_id: r.get(0),
            room_version: r.get(1),
            creator: r.get(2),
            is_public: r.get::<i64, _>(3) != 0,
        }))
    }

    pub async fn set_room_public(&self, room_id: &str, is_public: bool) -> StoreResult<()> {
        q("UPDATE rooms SET is_public = $2 WHERE room_id = $1")
            .bind(room_id.to_owned())
            .bind(i64::from(is_public))
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    /// Rooms published in the room directory.
    pub async fn public_rooms(&self) -> StoreResult<Vec<String>> {
        let rows = q("SELECT room_id FROM rooms WHERE is_public = 1 ORDER BY created_ts")
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.into_iter().map(|r| r.get(0)).collect())
    }

    pub async fn forget_room(&self, user_id: &str, room_id: &str) -> StoreResult<()> {
        q("INSERT INTO forgotten_rooms (user_id, room_id) VALUES ($1, $2) ON CONFLICT DO NOTHING")
            .bind(user_id.to_owned())
            .bind(room_id.to_owned())
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    /// Rejoining a forgotten room makes it visible again.
    pub async fn unforget_room(&self, user_id: &str, room_id: &str) -> StoreResult<()> {
        q("DELETE FROM forgotten_rooms WHERE user_id = $1 AND room_id = $2")
            .bind(user_id.to_owned())
            .bind(room_id.to_owned())
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    pub async fn forgotten_rooms(&self, user_id: &str) -> StoreResult<Vec<String>> {
        let rows = q("SELECT room_id FROM forgotten_rooms WHERE user_id = $1")
            .bind(user_id.to_owned())
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.into_iter().map(|r| r.get(0)).collect())
    }
}
