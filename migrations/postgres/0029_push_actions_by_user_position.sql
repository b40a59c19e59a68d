-- event_push_actions is keyed by (user, position) instead of (user, room, position). A batch of
-- messages notifies every member of its rooms; with the room in the key each (user, room) pair
-- inserted into its own index leaf page, now each user's keys are appended at one place.
-- /notifications reads exactly this key; the unread counts (user, rooms, after the read
-- receipt) scan the user's rows after the oldest receipt of the rooms asked for and filter by
-- room. Positions are unique per event, so the key is as unique as before.
ALTER TABLE event_push_actions DROP CONSTRAINT event_push_actions_pkey;
ALTER TABLE event_push_actions ADD PRIMARY KEY (user_id, stream_ordering);
