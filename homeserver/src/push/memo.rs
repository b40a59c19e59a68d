//! Sharing push rule outcomes between the members an event is evaluated for.
//!
//! A rule's outcome for a member other than the sender depends on the event, the room (its
//! member count and power levels) and the rule, and on the member only through the
//! `contains_display_name` condition. So members whose rule sets hold the same rule (every
//! server-default rule except the few naming the user) get the same answer, and one event's
//! evaluation computes it once (`EventMemo`) instead of once per member: pattern matching
//! lowercases and compiles a glob on every check, which made evaluation most of a large room's
//! send cost.

use std::{
    collections::{HashMap, HashSet},
    hash::{BuildHasher, BuildHasherDefault, Hash, Hasher, RandomState},
    sync::{Arc, Mutex, OnceLock},
};

use ruma::{
    UserId,
    push::{AnyPushRuleRef, FlattenedJson, PushCondition, PushConditionRoomCtx, Ruleset},
};

/// A user's rule set with, for each rule in evaluation order (`Ruleset::iter`), the key of what
/// it tests when that does not depend on the member.
pub struct Rules {
    pub set: Ruleset,
    keys: Box<[Option<RuleKey>]>,
}

impl Rules {
    /// `user_id`'s rule set. Rules naming the user (their ID, or their localpart as a content
    /// pattern: the default mention rules) have no key: no other member shares their outcome,
    /// so memoizing them would only cost an insertion per member and event.
    pub fn new(set: Ruleset, user_id: &UserId) -> Self {
        let own_pattern = format!("\"pattern\":\"{}\"", user_id.localpart());
        let keys = set
            .iter()
            .map(|rule| {
                RuleKey::of(rule)
                    .filter(|key| !key.text.contains(user_id.as_str()) && !key.text.contains(&own_pattern))
            })
            .collect();
        Self { set, keys }
    }
}

/// A member-independent rule, by its kind and serialized form (two rules with the same key test
/// the same thing). The hash is computed once, with a key random per process, so a user's own
/// rules cannot be crafted to collide.
#[derive(Clone, Eq)]
struct RuleKey {
    hash: u64,
    text: Arc<str>,
}

impl RuleKey {
    fn of(rule: AnyPushRuleRef<'_>) -> Option<Self> {
        // Deprecated by the spec (`m.mentions` replaces it) but still in the default rules.
        #[allow(deprecated)]
        let has_display_name = |r: &ruma::push::ConditionalPushRule| {
            r.conditions
                .iter()
                .any(|c| matches!(c, PushCondition::ContainsDisplayName))
        };
        let serialized = match rule {
            AnyPushRuleRef::Override(r) if !has_display_name(r) => {
                serde_json::to_string(r).map(|s| ("override", s))
            }
            AnyPushRuleRef::Underride(r) if !has_display_name(r) => {
                serde_json::to_string(r).map(|s| ("underride", s))
            }
            AnyPushRuleRef::Content(r) => serde_json::to_string(r).map(|s| ("content", s)),
            AnyPushRuleRef::Room(r) => serde_json::to_string(r).map(|s| ("room", s)),
            AnyPushRuleRef::Sender(r) => serde_json::to_string(r).map(|s| ("sender", s)),
            // Rules naming the member's display name, and kinds this code does not know: evaluated
            // per member.
            _ => return None,
        };
        let (kind, json) = serialized.ok()?;
        let text = format!("{kind}:{json}");
        static HASHER: OnceLock<RandomState> = OnceLock::new();
        let hash = HASHER.get_or_init(RandomState::new).hash_one(&text);
        Some(Self {
            hash,
            text: intern(text),
        })
    }
}

/// Distinct rules kept shared, so that equal keys are usually one allocation and compare by
/// pointer (the default rules are the same for almost every user).
const MAX_INTERNED: usize = 100_000;

fn intern(text: String) -> Arc<str> {
    static INTERNED: Mutex<Option<HashSet<Arc<str>>>> = Mutex::new(None);
    let Ok(mut guard) = INTERNED.lock() else {
        return text.into();
    };
    let set = guard.get_or_insert_with(HashSet::new);
    if let Some(found) = set.get(text.as_str()) {
        return found.clone();
    }
    if set.len() >= MAX_INTERNED {
        set.clear();
    }
    let shared: Arc<str> = text.into();
    set.insert(shared.clone());
    shared
}

impl PartialEq for RuleKey {
    fn eq(&self, other: &Self) -> bool {
        self.hash == other.hash && (Arc::ptr_eq(&self.text, &other.text) || self.text == other.text)
    }
}

impl Hash for RuleKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.hash);
    }
}

/// The outcomes of member-independent rules for one event, filled as its members are evaluated.
#[derive(Default)]
pub struct EventMemo {
    applies: HashMap<RuleKey, bool, BuildHasherDefault<KeyHash>>,
}

/// Hashes a `RuleKey` by the hash it carries (already keyed per process), instead of hashing
/// that again for each of a member's rules.
#[derive(Default)]
struct KeyHash(u64);

impl Hasher for KeyHash {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is expected (`RuleKey::hash`); anything else is still hashed.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

impl EventMemo {
    /// The actions of the first rule of `rules` that applies to `event` for the member in `ctx`
    /// (never the sender), or none.
    pub async fn actions<'r>(
        &mut self,
        rules: &'r Rules,
        event: &FlattenedJson,
        ctx: &PushConditionRoomCtx,
    ) -> &'r [ruma::push::Action] {
        for (rule, key) in rules.set.iter().zip(rules.keys.iter()) {
            let applies = match key {
                Some(key) => match self.applies.get(key) {
                    Some(&known) => known,
                    None => {
                        let answer = rule.applies(event, ctx).await;
                        self.applies.insert(key.clone(), answer);
                        answer
                    }
                },
                None => rule.applies(event, ctx).await,
            };
            if applies {
                return rule.actions();
            }
        }
        &[]
    }
}

#[cfg(test)]
mod tests {
    use ruma::{UserId, push::Ruleset};

    use super::Rules;

    #[test]
    fn only_rules_that_do_not_name_the_member_are_shared() {
        let alice = UserId::parse("@alice:example.org").unwrap();
        let rules = Rules::new(Ruleset::server_default(&alice), &alice);
        let keyed = |id: &str| {
            rules
                .set
                .iter()
                .zip(rules.keys.iter())
                .find(|(rule, _)| rule.rule_id() == id)
                .map(|(_, key)| key.is_some())
                .unwrap_or_else(|| panic!("{id} is a default rule"))
        };
        assert!(keyed(".m.rule.message"));
        assert!(keyed(".m.rule.is_room_mention"));
        // Name alice: their outcome is hers alone.
        assert!(!keyed(".m.rule.is_user_mention"));
        assert!(!keyed(".m.rule.invite_for_me"));

        // The same rule in two members' sets is one interned key.
        let bob = UserId::parse("@bob:example.org").unwrap();
        let bobs = Rules::new(Ruleset::server_default(&bob), &bob);
        let message = |r: &Rules| {
            r.set
                .iter()
                .zip(r.keys.iter())
                .find(|(rule, _)| rule.rule_id() == ".m.rule.message")
                .and_then(|(_, key)| key.clone())
                .unwrap()
        };
        assert!(message(&rules) == message(&bobs));
        assert!(std::sync::Arc::ptr_eq(
            &message(&rules).text,
            &message(&bobs).text
        ));
    }
}
